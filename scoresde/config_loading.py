"""Loading experiment config files: ``path.py[:arg]``, ``section.field=value`` overrides, checks.

A config file defines ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``
with the reference's field names (Song et al., 2021). :func:`load_config` imports it by
path (as a module of its package, so ``from experiments.configs import common`` works from
any working directory), applies overrides the way ``--config.section.field=value`` flags of
``ml_collections.config_flags`` do (the value is parsed as a Python literal and must keep the
field's type), and checks the fields with :func:`validate_config`.

The ``scoresde`` command line can equally use ``config_flags.DEFINE_config_file`` and then
call :func:`validate_config`; the imports of ``experiments.configs`` then need the repository
root on ``sys.path``, which :func:`import_config_module` arranges.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

#: ``training.sde`` values.
SDE_NAMES = ("vpsde", "subvpsde", "vesde")
#: ``sampling.method`` values.
SAMPLING_METHODS = ("pc", "ode")
#: ``sampling.predictor`` values (``ancestral_sampling`` is the reference's name of
#: ``ancestral``).
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "ancestral_sampling", "none")
#: ``sampling.corrector`` values.
CORRECTORS = ("langevin", "ald", "none")
#: Sections every experiment config has.
SECTIONS = ("training", "sampling", "eval", "data", "model", "optim")


def _package_root(path: pathlib.Path) -> tuple[pathlib.Path, str]:
    """The first ancestor of ``path`` that is not a package, and the module's dotted name."""
    parts = [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.append(directory.name)
        directory = directory.parent
    return directory, ".".join(reversed(parts))


def import_config_module(path: str | os.PathLike):
    """Imports a config file by path, as ``experiments.configs....`` when inside a package.

    Args:
      path: a ``.py`` file defining ``get_config``.

    Returns:
      The imported module.
    """
    file = pathlib.Path(path).resolve()
    if not file.is_file() or file.suffix != ".py":
        raise FileNotFoundError(f"load_config: config file {str(path)!r} is not a .py file.")
    root, module_name = _package_root(file)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "." not in module_name:  # a file outside any package: a unique top-level name
        spec = importlib.util.spec_from_file_location(f"_scoresde_config_{module_name}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    module = importlib.import_module(module_name)
    if pathlib.Path(module.__file__).resolve() != file:
        raise ImportError(
            f"load_config: {module_name!r} resolves to {module.__file__}, not {file}; another "
            "package of that name shadows it on sys.path."
        )
    return importlib.reload(module)


def split_config_arg(spec: str) -> tuple[str, str | None]:
    """Splits ``"path.py:arg"`` into ``("path.py", "arg")`` (``arg`` is ``None`` if absent).

    Example:
      >>> split_config_arg("experiments/configs/digits.py:smoke")
      ('experiments/configs/digits.py', 'smoke')
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return head, tail
    return spec, None


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string, as config_flags accepts


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[str] | Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Sets ``section.field`` values in place; the field must exist and keep its type.

    Args:
      config: the config to change.
      overrides: ``["training.n_iters=10", ...]`` (values parsed as Python literals) or a
        mapping ``{"training.n_iters": 10}``.

    Returns:
      ``config``.

    Example:
      >>> import ml_collections
      >>> c = ml_collections.ConfigDict({"training": {"n_iters": 5}})
      >>> apply_overrides(c, ["training.n_iters=10"]).training.n_iters
      10
    """
    items = (
        list(overrides.items())
        if isinstance(overrides, Mapping)
        else [_split_override(o) for o in overrides]
    )
    for dotted, value in items:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise ValueError(f"config override {dotted!r}: no section {part!r} in the config.")
            node = node[part]
        if leaf not in node:
            raise ValueError(
                f"config override {dotted!r}: no field {leaf!r}; fields here: {sorted(node)}."
            )
        current = node[leaf]
        if isinstance(current, tuple) and isinstance(value, list | int):
            value = tuple(value) if isinstance(value, list) else (value,)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(
                f"config override {dotted}={value!r}: the field holds {type(current).__name__} "
                f"({current!r}); {e}"
            ) from None
    return config


def _split_override(text: str) -> tuple[str, Any]:
    text = text.removeprefix("--config.").removeprefix("config.")
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"config override must look like 'section.field=value', got {text!r}.")
    return key.strip(), _parse_value(value.strip())


def validate_config(config: Any) -> None:
    """Checks an experiment config's sections and the values that select code paths.

    Raises ``ValueError`` naming the field, its value and the allowed values for: a missing
    section, ``training.sde``, ``sampling.method``/``predictor``/``corrector``, a bad
    ``data`` section (see :func:`scoresde.data.check_data_config`), non-positive batch sizes
    or ``training.n_iters``.

    Example:
      >>> try:
      ...     validate_config({"training": {"sde": "ddpm"}})
      ... except ValueError as e:
      ...     print(str(e)[:55])
      config: missing section(s) ['sampling', 'eval', 'data',
    """
    from scoresde.data import check_data_config

    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ValueError(
            f"config: missing section(s) {missing}; an experiment config has {list(SECTIONS)}."
        )
    checks = (
        ("training", "sde", SDE_NAMES),
        ("sampling", "method", SAMPLING_METHODS),
        ("sampling", "predictor", PREDICTORS),
        ("sampling", "corrector", CORRECTORS),
    )
    for section, field, allowed in checks:
        value = config[section].get(field) if hasattr(config[section], "get") else None
        if value is None:
            raise ValueError(f"config: {section}.{field} is missing; allowed: {allowed}.")
        if str(value).lower() not in allowed:
            raise ValueError(f"config: {section}.{field} must be one of {allowed}, got {value!r}.")
    for section, field in (("training", "batch_size"), ("eval", "batch_size")):
        value = config[section].get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config: {section}.{field} must be a positive int, got {value!r}.")
    n_iters = config["training"].get("n_iters")
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"config: training.n_iters must be a positive int, got {n_iters!r}.")
    check_data_config(config)


def load_config(
    spec: str | os.PathLike,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    validate: bool = True,
) -> ml_collections.ConfigDict:
    """Loads ``path.py[:arg]``, applies overrides, and validates.

    Args:
      spec: config file path, optionally with ``:arg`` (``"...py:smoke"``).
      overrides: ``["section.field=value", ...]`` or ``{"section.field": value}``.
      validate: run :func:`validate_config`.

    Returns:
      The ``ConfigDict``.

    Example:
      >>> import pathlib, scoresde
      >>> repo = pathlib.Path(scoresde.__file__).parents[1]
      >>> c = load_config(f"{repo}/experiments/configs/digits.py:smoke", ["training.n_iters=3"])
      >>> c.training.n_iters, c.data.dataset
      (3, 'DIGITS')
    """
    path, arg = split_config_arg(os.fspath(spec))
    module = import_config_module(path)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ValueError(f"load_config: {path!r} defines no get_config().")
    config = get_config(arg) if arg is not None else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(
            f"load_config: get_config() of {path!r} returned {type(config).__name__}, "
            "expected ml_collections.ConfigDict."
        )
    apply_overrides(config, overrides)
    if validate:
        validate_config(config)
    return config
