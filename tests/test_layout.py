"""The package tree reads as the data path, and no module imports one above it."""
from __future__ import annotations

import ast
from pathlib import Path

import selfsup

ROOT = Path(selfsup.__file__).parent
LAYERS = [  # lowest first; a module may import its own layer and the ones below
    {"errors", "registry", "config", "schedules", "files", "distributed"},
    {"data"},
    {"models"},
    {"methods"},
    {"train"},
    {"eval"},
    {"output"},
    {"api", "cli", "demo", "encoders", "__main__"},
]


def layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfsup."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("selfsup.")}
    return found


def test_no_module_imports_a_layer_above_it():
    wrong = []
    for path in ROOT.rglob("*.py"):
        name = "selfsup." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if name in ("selfsup.__init__", "selfsup.__main__"):
            continue
        for target in imports(path):
            if layer(target) > layer(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_backbones_register_only_in_models():
    for path in ROOT.rglob("*.py"):
        if "BACKBONES.register" in path.read_text():
            assert path.relative_to(ROOT).parts[0] == "models", path
