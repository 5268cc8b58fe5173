"""Reading what an objective or backbone declares, and its constructor's arguments, from its source: no import of
the module itself (so no torch), before anything heavy is loaded.

A declaration is a class attribute `declaration = ObjectiveDeclaration(...)` or `BackboneDeclaration(...)` with
literal arguments (numbers, strings, booleans, tuples, dicts); the constructor's parameters, their annotations
and literal defaults are read from its `def __init__`. The built class carries the same `declaration` at run
time, so the config checks and the running code read one statement. Only the packages above the module are
imported (`importlib.util.find_spec`), never the module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from voxfm.models.spec import BackboneDeclaration
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration

KINDS = {"BackboneDeclaration": BackboneDeclaration, "ObjectiveDeclaration": ObjectiveDeclaration}
REQUIRED = object()  # a constructor parameter without a default
SUPPLIED = {"self", "spec"}  # filled by voxfm, not by the config: the instance, an objective's BackboneSpec


@dataclass(frozen=True)
class Declared:
    """target: the dotted class; declaration: what it states; arguments: {name: (annotation text or None,
    literal default, or REQUIRED; a non-literal default reads as None)}."""

    target: str
    declaration: BackboneDeclaration | ObjectiveDeclaration
    arguments: dict

    def defaults(self) -> dict:
        return {k: d for k, (_, d) in self.arguments.items() if d is not REQUIRED}


def _literal(node: ast.expr | None, where: str):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(
            f"{where}: a declaration holds literals only (numbers, strings, booleans, tuples, lists, dicts)"
        ) from None


def _declaration(cls: ast.ClassDef, target: str):
    for node in cls.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["declaration"]
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) in KINDS
        ):
            if node.value.args:
                raise ValueError(f"{target}.declaration: keyword arguments only")
            kwargs = {kw.arg: _literal(kw.value, f"{target}.declaration.{kw.arg}") for kw in node.value.keywords}
            return KINDS[node.value.func.id](**kwargs)
    return None


def _arguments(cls: ast.ClassDef) -> dict:
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return {}
    params = init.args.posonlyargs + init.args.args
    defaults = [REQUIRED] * (len(params) - len(init.args.defaults)) + list(init.args.defaults)
    pairs = list(zip(params, defaults)) + list(zip(init.args.kwonlyargs, init.args.kw_defaults))
    out = {}
    for param, default in pairs:
        if param.arg in SUPPLIED:
            continue
        if default is not REQUIRED and default is not None:
            try:
                default = ast.literal_eval(default)
            except ValueError:
                default = None
        out[param.arg] = (ast.unparse(param.annotation) if param.annotation else None, default)
    return out


def source_file(module: str) -> Path | None:
    """The .py file of a module, found from its top-level package's folder: nothing is imported (`find_spec` of
    `a.b.c` would import `a.b`, and with it torch for most packages)."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is not None and spec.submodule_search_locations is None and "." not in module:  # a single-file module
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        base = Path(folder, *module.split(".")[1:])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
    return None


@cache
def _class_node(target: str) -> ast.ClassDef | None:
    module, _, name = target.rpartition(".")
    path = source_file(module) if module else None
    if path is None:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


@cache
def read_declared(target: str) -> Declared | None:
    """The declaration and arguments of the class `target` names, or None when it names no such class with a
    declaration. Raises ValueError for a declaration that is not plain literals."""
    cls = _class_node(target)
    declaration = _declaration(cls, target) if cls is not None else None
    return Declared(target, declaration, _arguments(cls)) if declaration is not None else None


def constructor_defaults(target: str) -> dict:
    """The literal defaults of any class's constructor (e.g. `voxfm.data.views.pipeline.ViewPipeline`), read from
    its source: a config node completed with them is what the constructor will see, and no default is written
    twice."""
    cls = _class_node(target) if isinstance(target, str) else None
    return {k: d for k, (_, d) in _arguments(cls).items() if d is not REQUIRED} if cls is not None else {}


BACKBONES_ENV = "VOXFM_BACKBONES"  # modules of a user's own backbones, comma-separated (README, adding a backbone)


@cache
def declared_backbones() -> dict[str, Declared]:
    """Every class that declares itself a backbone in voxfm's `models` package, or in a module named by the
    environment variable VOXFM_BACKBONES: the only classes a stored config (checkpoint, export) may name. A file
    cannot add to it, only the user's environment."""
    from voxfm import models

    modules = [info.name for info in pkgutil.iter_modules(models.__path__, "voxfm.models.")]
    modules += [m.strip() for m in os.environ.get(BACKBONES_ENV, "").split(",") if m.strip()]
    found = {}
    for module in modules:
        path = source_file(module)
        if path is None:
            from voxfm.pretrain.errors import ConfigError

            raise ConfigError(
                f"{BACKBONES_ENV}={os.environ.get(BACKBONES_ENV)!r}: no module {module!r} (a dotted "
                "module that Python can import)"
            )
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            declared = read_declared(f"{module}.{cls.name}")
            if declared is not None and isinstance(declared.declaration, BackboneDeclaration):
                found[declared.target] = declared
    return found


def backbone_class_for(architecture: str) -> type:
    """The backbone class that declares `architecture` (the name an export carries): imported only once found
    among `declared_backbones()`; an unknown name is a ConfigError, never a fallback."""
    from voxfm.pretrain.errors import ConfigError

    targets, seen = {}, declared_backbones()
    for target, declared in seen.items():
        other = targets.setdefault(declared.declaration.architecture, target)
        if other != target:  # a user's backbone must not silently take over another's exports
            raise ConfigError(
                f"architecture={declared.declaration.architecture!r} is declared by both {other} and "
                f"{target}; give each backbone its own (VOXFM_BACKBONES={os.environ.get(BACKBONES_ENV)!r})"
            )
    if architecture not in targets:
        raise ConfigError(
            f"architecture={architecture!r}: no declared backbone has it; known: {', '.join(sorted(targets))}"
        )
    module, _, name = targets[architecture].rpartition(".")
    return getattr(importlib.import_module(module), name)
