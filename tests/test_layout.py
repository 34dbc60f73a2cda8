"""Import rules of the layout (docs/ARCHITECTURE.md), checked on the source: function-level imports count too."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "open_clip", "worker", "torchvision", "timm")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def heavy_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if m.split(".")[0] in HEAVY}


def test_the_server_reaches_torch_through_the_probe_engine_alone():
    doors = {p.relative_to(ROOT).as_posix() for p in (ROOT / "app").rglob("*.py") if heavy_imports(p)}
    assert doors <= {"app/probe.py"}, doors


def test_the_rule_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "view.py"
    f.write_text("def lab():\n    from worker.typographic import try_attack\n    return try_attack\n")
    assert heavy_imports(f) == {"worker.typographic"}


def test_the_store_imports_neither_the_app_nor_the_worker():
    found = {p.name: sorted(m for m in imported_modules(p) if m.split(".")[0] in ("app", "worker"))
             for p in (ROOT / "store").glob("*.py")}
    assert not {name: mods for name, mods in found.items() if mods}


COMPUTE = ("models", "layers", "towers", "checkpoints", "load_settings", "corpus", "topk", "stats", "render_text",
           "text_scores", "precision", "device_decode")


def test_the_shared_compute_imports_no_store_and_no_app():
    """The modules a GPU box or a Ray worker needs: no SQLAlchemy, no FastAPI, nothing of the store but its
    repo-root path."""
    bad = {}
    for name in COMPUTE:
        mods = imported_modules(ROOT / "worker" / f"{name}.py")
        found = sorted(m for m in mods if m.split(".")[0] in ("app", "sqlalchemy", "fastapi")
                       or (m.startswith("store") and m != "store.paths"))
        if found:
            bad[name] = found
    assert not bad
