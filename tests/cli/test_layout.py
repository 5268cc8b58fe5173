"""One import root: every first-party import and `_target_` names `voxfm.*`, and pyproject.toml packages every
folder that holds code or configs (a package left out would be missing from the wheel)."""

import ast
import re

from tests.conftest import REPO

ROOTS = ("pretrain", "models", "data", "conf")
OLD = re.compile(r"^(pretrain|models|data|conf)(\.|$)")


def python_files():
    for folder in (*ROOTS, "scripts", "tests"):
        yield from (p for p in (REPO / folder).rglob("*.py") if "fixtures" not in p.parts)
    yield REPO / "__init__.py"
    yield REPO / "__main__.py"


def test_pyproject_packages_every_folder_of_code_and_configs():
    (block,) = re.findall(r"\npackages = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), flags=re.S)
    listed = set(re.findall(r'"([\w.]+)"', block))  # no tomllib: Python 3.10 is supported
    found = {"voxfm"}
    for root in ROOTS:
        for folder in [REPO / root, *(p for p in (REPO / root).rglob("*") if p.is_dir())]:
            if "__pycache__" not in folder.parts and (any(folder.glob("*.py")) or any(folder.glob("*.yaml"))):
                found.add("voxfm." + ".".join(folder.relative_to(REPO).parts))
    assert listed == found


def test_no_module_imports_voxfm_under_an_old_top_level_name():
    bare = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            bare += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if OLD.match(n)]
    assert bare == []


def test_every_config_target_is_a_voxfm_or_torch_class():
    targets = [
        (p, t) for p in (REPO / "conf").rglob("*.yaml") for t in re.findall(r"_target_:\s*([\w.]+)", p.read_text())
    ]
    assert targets and all(t.startswith(("voxfm.", "torch.")) for _, t in targets), targets


def imports_of(folder: str) -> set[str]:
    """voxfm modules that the code under `folder` imports, at the top or inside functions."""
    found = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return {name for name in found if name.startswith("voxfm.")}


def test_the_layers_depend_one_way():
    """pretrain/ uses data/ and models/, never the reverse; inside data/, views → stream → ingest."""
    for low in ("data", "models"):
        assert not {m for m in imports_of(low) if m.startswith("voxfm.pretrain")}, low
    assert not {m for m in imports_of("models") if m.startswith("voxfm.data")}
    assert not {m for m in imports_of("data/ingest") if m.startswith(("voxfm.data.stream", "voxfm.data.views"))}
    assert not {m for m in imports_of("data/stream") if m.startswith("voxfm.data.views")}
