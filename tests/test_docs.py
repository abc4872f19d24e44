"""The documentation: API reference coverage, the docstring examples, and the site build.

- Every name exported by ``scoresde`` (and by any of its modules' ``__all__``) must appear
  in a mkdocstrings ``::: identifier`` block of the API reference pages, so that a new
  export without documentation fails here.
- The ``>>>`` examples of every module's docstrings are run with :mod:`doctest`.
- ``mkdocs build --strict`` (slow; only when mkdocs is installed).
"""

from __future__ import annotations

import doctest
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "scoresde"
API_DIR = ROOT / "docs" / "api"

# Optional dependencies: a module that needs one of these may be skipped when it is missing.
OPTIONAL_DEPENDENCIES = ("torch", "tensorflow")

# Modules whose docstring examples take more than ~4 s of CPU here (measured alone, one
# process, past the ~2 s of importing jax and the package: mostly the compilation of full
# ODE/SDE solves). Their doctests run with `-m slow`, so the fast selection of this file stays
# within its 60 s budget. The network modules' examples trace with `jax.eval_shape` or use
# tiny networks and run in the fast set. CPU seconds when this list was made, for the record:
_SLOW_DOCTEST_MODULES = {
    "scoresde.likelihood",  # 11 s
    "scoresde.losses",  # 6 s
    "scoresde.sampling.controllable",  # 13 s
    "scoresde.sampling.ode",  # 4 s
    "scoresde.sampling.pc",  # 5 s
}

# ``::: scoresde.name`` at the start of a line (mkdocstrings' autodoc syntax).
_AUTODOC = re.compile(r"^:::\s+([A-Za-z_][\w.]*)\s*$", re.MULTILINE)


def _module_names() -> list[str]:
    """Every module of the package, found on disk (collection does not import anything)."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _autodoc_identifiers() -> list[str]:
    """The identifiers of all ``:::`` blocks in ``docs/api``."""
    identifiers = []
    for page in sorted(API_DIR.glob("*.md")):
        identifiers.extend(_AUTODOC.findall(page.read_text()))
    return identifiers


def _resolve(identifier: str):
    """The object named by a dotted path ``package.module.attr...``, or a sentinel."""
    parts = identifier.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _UNRESOLVED
        return obj
    return _UNRESOLVED


_UNRESOLVED = object()


def _undocumented(module: types.ModuleType, identifiers: list[str]) -> list[str]:
    """Names of ``module.__all__`` that no ``:::`` block documents.

    A name counts as documented when a block names it through ``module`` (``::: scoresde.X``)
    or names the object it exports under any other path (``::: scoresde.sde.X``). An exported
    submodule counts as documented when all of its own ``__all__`` is.
    """
    resolved = [_resolve(i) for i in identifiers]
    missing = []
    for name in module.__all__:
        if f"{module.__name__}.{name}" in identifiers:
            continue
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType) and hasattr(obj, "__all__"):
            if not _undocumented(obj, identifiers):
                continue
        elif any(r is obj for r in resolved):
            continue
        missing.append(name)
    return missing


def test_api_pages_exist():
    identifiers = _autodoc_identifiers()
    assert identifiers, f"no '::: identifier' blocks found under {API_DIR}"
    unresolved = [i for i in identifiers if _resolve(i) is _UNRESOLVED]
    assert not unresolved, f"API reference blocks name objects that do not exist: {unresolved}"


@pytest.mark.parametrize("module_name", ["scoresde", "scoresde.models"])
def test_every_export_is_in_the_api_reference(module_name):
    module = importlib.import_module(module_name)
    if not hasattr(module, "__all__"):
        pytest.skip(f"{module_name} defines no __all__")
    missing = _undocumented(module, _autodoc_identifiers())
    assert not missing, (
        f"{module_name} exports names that no '::: {module_name}.NAME' block under docs/api/ "
        f"documents: {missing}. Add them to the API reference page of their concept."
    )


def test_every_submodule_export_is_in_the_api_reference():
    """The same for every module of the package that declares an ``__all__``."""
    identifiers = _autodoc_identifiers()
    missing = {}
    for module_name in _module_names():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL_DEPENDENCIES:
                continue
            raise
        if hasattr(module, "__all__"):
            names = _undocumented(module, identifiers)
            if names:
                missing[module_name] = names
    assert not missing, (
        f"modules export names that no '::: module.NAME' block under docs/api/ documents: "
        f"{missing}. Add them to the API reference page of their concept."
    )


def test_undocumented_export_is_detected():
    """The coverage check itself: a fake export missing from the pages is reported."""
    fake = types.ModuleType("scoresde_fake")
    fake.documented = object()
    fake.forgotten = object()
    fake.__all__ = ["documented", "forgotten"]
    sys.modules["scoresde_fake"] = fake
    try:
        assert _undocumented(fake, ["scoresde_fake.documented"]) == ["forgotten"]
    finally:
        del sys.modules["scoresde_fake"]


def _import_or_skip(module_name: str) -> types.ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in OPTIONAL_DEPENDENCIES:
            pytest.skip(f"{module_name} needs the optional dependency {missing!r}")
        raise


def _doctest_cases() -> list:
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_DOCTEST_MODULES else name
        for name in _module_names()
    ]


@pytest.mark.parametrize("module_name", _doctest_cases())
def test_docstring_examples(module_name):
    module = _import_or_skip(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    report = io.StringIO()
    n_examples = 0
    for test in finder.find(module, module_name):
        n_examples += len(test.examples)
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {n_examples} docstring examples of {module_name} failed:\n"
        + report.getvalue()
    )


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
