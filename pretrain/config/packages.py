"""Optional packages a config needs, found before anything is built: a `_target_` whose module imports a package
that is not installed is a configuration error naming the key and the install command, not Hydra's
"Error locating target" after torch has loaded.

The module of each `_target_` is read, not imported (`ast` over its source: the top-level imports, following
voxfm's own modules), and every package it imports is looked up with `importlib.util.find_spec`, which imports
nothing but the package's parents. The install hints are keyed by the missing package, so no backbone or
objective is named here.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache

from voxfm.pretrain.config.declarations import source_file
from voxfm.pretrain.errors import ConfigError

FIRST_PARTY = ("voxfm",)  # voxfm itself, whose modules are read to follow their imports

# package → (what it is, how to install it); pyproject.toml's `nnunet` extra and the Makefile pin the same version
INSTALL = {
    "dynamic_network_architectures": (
        "nnU-Net's networks (dynamic_network_architectures)",
        'pip install "voxfm[nnunet]" (with a CPU-only torch: pip install --no-deps '
        "dynamic-network-architectures==0.4.4)",
    ),
}


def missing_package_errors(cfg: dict, path: str = "", try_imports: bool = False) -> list[str]:
    """One line per `_target_` in the resolved config whose module needs a package that is not installed; with
    `try_imports`, also one per optional package (`INSTALL`) that is installed but fails to import (that import
    loads torch: run it after the config checks)."""
    errors: list[str] = []
    if isinstance(cfg, dict):
        target = cfg.get("_target_")
        if isinstance(target, str) and "." in target:
            imported = _external_imports(target.rsplit(".", 1)[0])
            for package in sorted({name.split(".")[0] for name in imported} - _installed_set(imported)):
                errors.append(f"{path or 'config'}._target_={target}: {needs(package)}")
            for package, err in sorted(_broken(imported).items() if try_imports else ()):
                errors.append(f"{path or 'config'}._target_={target}: {needs(package, err)}")
        for key, value in cfg.items():
            errors += missing_package_errors(value, f"{path}.{key}" if path else str(key), try_imports)
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            errors += missing_package_errors(value, f"{path}[{i}]", try_imports)
    return errors


def check_packages(cfg: dict, try_imports: bool = False) -> None:
    errors = missing_package_errors(cfg, try_imports=try_imports)
    if errors:
        raise ConfigError("; ".join(errors))


def needs(package: str, broken: str | None = None) -> str:
    what, install = INSTALL.get(package, (f"the Python package {package}", f"install {package}"))
    if broken:
        return f"needs {what}, which is installed but fails to import ({broken}); reinstall it: {install}"
    return f"needs {what}, which is not installed: {install}"


def from_import_error(err: BaseException) -> ConfigError | None:
    """A `ModuleNotFoundError` of a package in `INSTALL` (raised at run time, or wrapped by Hydra's
    `instantiate`, anywhere in the chain of causes) as a `ConfigError`; None for any other error."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] in INSTALL:
            return ConfigError(f"this configuration {needs(err.name.split('.')[0])}")
        err = err.__cause__ or err.__context__
    return None


def _external_imports(module: str) -> set[str]:
    """Modules of other packages that `module` (and the voxfm modules it imports at top level) import."""
    if module.split(".")[0] not in FIRST_PARTY:
        return {module}
    external, seen, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _top_level_imports(name):
            if imported.split(".")[0] in FIRST_PARTY:
                todo.append(imported)
            else:
                external.add(imported)
    return external


def _installed_set(imported: set[str]) -> set[str]:
    return {top for top in {name.split(".")[0] for name in imported} if _installed(top)}


def _broken(imported: set[str]) -> dict[str, str]:
    """The optional packages (`INSTALL`) among `imported` that are installed but fail to import (a build for
    another torch, a missing dependency of theirs): {package: "ErrorType: message"}. Only these are imported here
    (they import torch: about a second, spent once the config needs them)."""
    broken = {}
    for name in sorted(imported):
        top = name.split(".")[0]
        if top in INSTALL and top not in broken and _installed(top):
            err = _import_error(name)
            if err:
                broken[top] = err
    return broken


@cache
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as err:  # whatever a broken install raises: ImportError, RuntimeError, OSError, ...
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


@cache
def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


@cache
def _top_level_imports(module: str) -> tuple[str, ...]:
    """Modules imported by the statements at the top of `module`'s source (not inside functions, `if` or `try`):
    `from a import b` gives `a` and, where `a.b` is a voxfm module, `a.b`."""
    path = source_file(module)
    if path is None:
        return ()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            names.append(base)
            if base.split(".")[0] in FIRST_PARTY:
                names += [f"{base}.{a.name}" for a in node.names if source_file(f"{base}.{a.name}") is not None]
    return tuple(names)
