"""The imports run one way: command line → tasks → loop and refiners → backbones (models/).

Read from the source (every import, also those inside functions), so a lazy import that runs the
wrong way is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = {"diffier_cli.sampling", "diffier_cli.refine", "diffier_cli.iec", "diffier_cli.refiners"}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (`from a import b` gives a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("models"), ids=lambda p: str(p.relative_to(ROOT)))
def test_models_import_nothing_of_the_command_line(path):
    assert not {name for name in imports(path) if name.split(".")[0] == "diffier_cli"}


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_imports_only_the_core_and_models(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    outside = {name for name in imports(path) if name.split(".")[0] == "diffier_cli"
               and not any(name == core or name.startswith(f"{core}.") for core in CORE)}
    assert not outside


def test_the_loop_knows_no_refiner():
    assert not {name for name in imports(ROOT / "diffier_cli/sampling.py") if name.startswith("diffier_cli.")}


def test_every_package_is_installed():
    """A sub-package missing from pyproject's explicit list works in an editable install and is
    absent from a wheel: `pip install .` would then fail at the first command."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(init.parent.relative_to(ROOT)).replace("/", ".") for top in ("diffier_cli", "models")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found == listed


def test_every_registered_refiner_has_its_command_line_face():
    """--refiner lists the registry's names; each needs its label, flags and builder, or a new
    refiner would be chosen and silently built as another."""
    from diffier_cli.commands.options import REFINER_FLAGS
    from diffier_cli.refiners import REFINERS

    assert set(REFINER_FLAGS) == set(REFINERS)
