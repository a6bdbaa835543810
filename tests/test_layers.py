"""Imports run one way: cli -> eval -> pipeline -> export -> server_side, every layer may use
runtime, runtime uses none of them; inside server_side the two stages (synth, contrastive) share
only its base modules and never import each other. Read from the source, so it needs no extras."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edge_persrep"
ORDER = ["cli", "eval", "pipeline", "export", "server_side"]  # each may import the ones after it
STAGES = {"synth", "contrastive"}  # server_side's stages; the rest of server_side is their shared base


def imports(path: Path) -> list[str]:
    """Absolute names of the edge_persrep modules a file imports (relative imports resolved)."""
    package = ["edge_persrep", *path.relative_to(PACKAGE).parts[:-1]]  # the folder a relative import starts in
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.append(name)
            if not node.module:  # `from . import metrics`: the imported names are modules
                found += [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [n for n in found if n.startswith("edge_persrep.")]


def layer(name: str) -> str:
    return name.split(".")[1]


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(["edge_persrep", *path.relative_to(PACKAGE).with_suffix("").parts])
        src = layer(module) if module.count(".") else "edge_persrep"
        for target in imports(path):
            dst = layer(target)
            if dst in (src, "runtime") or dst.startswith("__") or src in ("__init__", "__main__"):
                if src == dst == "server_side":
                    a, b = module.split(".")[2], target.split(".")[2] if target.count(".") > 1 else ""
                    if a in STAGES and b in STAGES and a != b:
                        bad.append(f"{module} -> {target} (server_side stages import only the base)")
                continue
            if src == "runtime":
                bad.append(f"{module} -> {target} (runtime imports no other layer)")
            elif src in ORDER and dst in ORDER and ORDER.index(dst) < ORDER.index(src):
                bad.append(f"{module} -> {target} (upward)")
    return bad


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """An oracle: the same checker on a copy with one upward import must flag it."""
    import shutil

    copy = tmp_path / "edge_persrep"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "server_side" / "backbones.py"
    target.write_text(target.read_text() + "\nfrom ..export.onnx_export import finish_graph  # noqa\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    assert upward_imports() == ["edge_persrep.server_side.backbones -> edge_persrep.export.onnx_export (upward)"]
