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
    f.write_text("def lab():\n    from worker.analyses.typographic import try_attack\n    return try_attack\n")
    assert heavy_imports(f) == {"worker.analyses.typographic"}


def test_the_store_imports_neither_the_app_nor_the_worker():
    found = {p.name: sorted(m for m in imported_modules(p) if m.split(".")[0] in ("app", "worker"))
             for p in (ROOT / "store").glob("*.py")}
    assert not {name: mods for name, mods in found.items() if mods}


def worker_modules(folder: str) -> dict[str, set[str]]:
    """{module path: what it imports} for every module under worker/<folder>/."""
    return {p.relative_to(ROOT).as_posix(): imported_modules(p) for p in (ROOT / "worker" / folder).rglob("*.py")}


def test_the_shared_compute_imports_no_store_and_no_app():
    """worker/compute/ holds what a GPU box or a Ray worker needs: no SQLAlchemy, no FastAPI, nothing of the
    store but its repo-root path, and nothing of the stages, the pipeline, the CLI or the demo."""
    bad = {}
    for path, mods in worker_modules("compute").items():
        found = sorted(m for m in mods if m.split(".")[0] in ("app", "sqlalchemy", "fastapi")
                       or (m.startswith("store") and m != "store.paths")
                       or (m.startswith("worker.") and not m.startswith(("worker.compute", "worker.data"))))
        if found:
            bad[path] = found
    assert len(worker_modules("compute")) >= 15
    assert not bad


def test_each_folder_of_the_worker_imports_only_the_folders_below_it():
    """compute and data < analyses < stages < pipeline < demo < cli: nothing reaches up."""
    above = {"data": ("worker.analyses", "worker.stages", "worker.pipeline", "worker.demo", "worker.cli"),
             "analyses": ("worker.stages", "worker.pipeline.runner", "worker.pipeline.ray_executor",
                          "worker.demo", "worker.cli"),
             "stages": ("worker.pipeline.runner", "worker.pipeline.ray_executor", "worker.demo", "worker.cli"),
             "pipeline": ("worker.demo", "worker.cli"),
             "demo": ("worker.cli",)}
    bad = {}
    for folder, forbidden in above.items():
        for path, mods in worker_modules(folder).items():
            if found := sorted(m for m in mods if m.startswith(forbidden)):
                bad[path] = found
    assert not bad


def test_the_worker_root_holds_only_its_folders():
    loose = sorted(p.name for p in (ROOT / "worker").glob("*.py") if p.name != "__init__.py")
    assert not loose
