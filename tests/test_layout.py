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
    assert doors <= {"app/probe.py", "app/cli.py"}, doors


def test_the_rule_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "view.py"
    f.write_text("def lab():\n    from worker.typographic import try_attack\n    return try_attack\n")
    assert heavy_imports(f) == {"worker.typographic"}
