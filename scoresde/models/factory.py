"""The one place where a reference-style config becomes a score network.

:func:`from_config` reads ``config.model.name`` and hands the config to the builder of that
family (``ncsnpp``: :class:`~scoresde.models.ncsnpp.NCSNpp`, ``ddpm``: DDPM, ``ncsnv2``:
NCSNv2, ``ncsn``: NCSN). A config is an ``ml_collections.ConfigDict`` or a nested ``dict``
with the field names of the reference (``model.nf``, ``model.ch_mult``, ``data.centered``
...), e.g. a fixture's ``config.json``. Each builder reads the fields of its family and
returns a module with explicit, typed fields; nothing downstream sees the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

#: The model names :func:`from_config` accepts (``config.model.name``). A family added here
#: gets a ``<name>_from_config(config)`` builder in this file and an ``elif`` in
#: :func:`from_config`.
MODEL_NAMES = ("ncsnpp", "ddpm", "ncsnv2", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "ncsn", "mlp")

_MISSING = object()


def config_field(config: Any, dotted: str, default: Any = _MISSING) -> Any:
    """Reads ``config.<section>.<field>`` from a ConfigDict or a nested mapping.

    Args:
      config: an ``ml_collections.ConfigDict`` or a nested ``dict``.
      dotted: the field path, e.g. ``"model.nf"``.
      default: returned when the field is absent; without it a missing field is an error.

    Returns:
      The value; lists (as JSON stores tuples) come back as tuples.

    Example:
      >>> config_field({"model": {"ch_mult": [1, 2]}}, "model.ch_mult")
      (1, 2)
    """
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            if default is not _MISSING:
                return default
            raise ValueError(
                f"config: the field {dotted!r} is missing (no {part!r}); the reference's "
                f"config files define it, add it to the config."
            ) from None
    if isinstance(node, list):
        return tuple(node)
    return node


def _as_int_tuple(value: Any, dotted: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"config: {dotted} must be a sequence of ints, got {value!r}.")
    return tuple(int(v) for v in value)


#: Compute dtypes ``model.dtype`` may name (parameters stay float32 either way).
_COMPUTE_DTYPES = ("float32", "bfloat16")


def _extension_choice(config: Any, field: str, choices: tuple[str, ...], supported: bool) -> str:
    """The value of an optional ``model.<field>`` beyond the reference's configs.

    Absent means ``choices[0]``, the default; families without the option
    (``supported=False``) accept only the default.
    """
    value = config_field(config, f"model.{field}", choices[0])
    allowed = choices if supported else choices[:1]
    if value not in allowed:
        family = config_field(config, "model.name", "?")
        raise ValueError(
            f"config: model.{field} must be one of {allowed} for model.name={family!r}, "
            f"got {value!r}."
        )
    return value


def _compute_dtype(config: Any, supported: bool = True) -> Any:
    """The compute dtype of ``model.dtype`` (an extension of the reference's configs).

    Absent means float32. ``"bfloat16"`` runs convolutions, matrix products and activations in
    bfloat16 with float32 parameters (and float32 GroupNorm statistics); ``supported=False``
    (families without a ``dtype`` field) accepts only float32.

    Example:
      >>> _compute_dtype({"model": {"dtype": "bfloat16"}})
      dtype(bfloat16)
    """
    return jnp.dtype(_extension_choice(config, "dtype", _COMPUTE_DTYPES, supported))


def _group_norm_impl(config: Any, supported: bool = True) -> str:
    """``model.group_norm_impl`` (an extension of the reference's configs; absent: ``"auto"``).

    One of ``"auto"``, ``"xla"``, ``"pallas"`` for the families with GroupNorm
    (:func:`scoresde.models.group_norm.group_norm`); ``supported=False`` accepts only
    ``"auto"``.

    Example:
      >>> _group_norm_impl({"model": {"group_norm_impl": "xla"}})
      'xla'
    """
    from scoresde.models.group_norm import IMPLS

    return _extension_choice(config, "group_norm_impl", IMPLS, supported)


def ncsnpp_from_config(config: Any) -> nn.Module:
    """Builds :class:`~scoresde.models.ncsnpp.NCSNpp` (NCSN++ / DDPM++) from ``config.model``.

    Reads ``model.{nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv,
    conditional, fir, fir_kernel, skip_rescale, resblock_type, progressive, progressive_input,
    progressive_combine, embedding_type, fourier_scale, init_scale, scale_by_sigma,
    nonlinearity, sigma_min, sigma_max, num_scales}``, ``data.centered``, and the optional
    ``model.dtype`` (``"float32"``, the default, or ``"bfloat16"`` compute).

    Example:
      >>> cfg = {"model": {"name": "ncsnpp", "nf": 16, "ch_mult": [1, 2],
      ...                  "num_res_blocks": 1, "attn_resolutions": [8]},
      ...        "data": {"centered": False}}
      >>> ncsnpp_from_config(cfg).nf
      16
    """
    from scoresde.models.ncsnpp import NCSNpp

    def f(name: str, default: Any = _MISSING) -> Any:
        return config_field(config, f"model.{name}", default)

    attention_type = f("attention_type", "ddpm")
    if attention_type != "ddpm":
        raise ValueError(
            f"config: model.attention_type must be 'ddpm' (the only attention the reference "
            f"implements), got {attention_type!r}."
        )
    defaults = NCSNpp.__dataclass_fields__
    kwargs = {}
    for name in (
        "nf",
        "num_res_blocks",
        "dropout",
        "resamp_with_conv",
        "conditional",
        "fir",
        "skip_rescale",
        "resblock_type",
        "progressive",
        "progressive_input",
        "progressive_combine",
        "embedding_type",
        "fourier_scale",
        "init_scale",
        "scale_by_sigma",
        "nonlinearity",
        "sigma_min",
        "sigma_max",
        "num_scales",
    ):
        kwargs[name] = f(name, defaults[name].default)
    for name in ("ch_mult", "attn_resolutions", "fir_kernel"):
        kwargs[name] = _as_int_tuple(f(name, defaults[name].default), f"model.{name}")
    kwargs["centered"] = bool(config_field(config, "data.centered", defaults["centered"].default))
    for name in ("nf", "num_res_blocks", "num_scales"):
        kwargs[name] = int(kwargs[name])
    for name in ("dropout", "fourier_scale", "init_scale", "sigma_min", "sigma_max"):
        kwargs[name] = float(kwargs[name])
    return NCSNpp(**kwargs, dtype=_compute_dtype(config), group_norm_impl=_group_norm_impl(config))


def from_config(config: Any) -> nn.Module:
    """Builds the score network named by ``config.model.name`` from a reference-style config.

    Args:
      config: an ``ml_collections.ConfigDict`` or a nested ``dict`` with the reference's
        field names (``model.name``, ``model.nf``, ``data.centered`` ...).

    Returns:
      A ``flax.linen`` module, applied as ``model.apply(variables, x, labels, train=...)``
      with NHWC ``x``.

    Beyond the reference's fields, ``model.dtype`` (NCSN++/DDPM++ and DDPM only) selects the
    compute dtype: ``"float32"`` (the default) or ``"bfloat16"`` (convolutions, matrix
    products and activations in bfloat16; parameters, GroupNorm statistics and the output in
    float32), e.g. ``--config.model.dtype=bfloat16`` on the command line; and
    ``model.group_norm_impl`` GroupNorm's implementation (``"auto"``, the default: a fused
    GroupNorm + SiLU kernel on CUDA GPUs where it is faster; ``"xla"``; ``"pallas"``).

    Example:
      >>> import scoresde as sd
      >>> cfg = {"model": {"name": "ncsnpp", "nf": 16, "ch_mult": [1, 2],
      ...                  "num_res_blocks": 1, "attn_resolutions": [8]},
      ...        "data": {"centered": False}}
      >>> type(sd.models.from_config(cfg)).__name__
      'NCSNpp'
    """
    if not isinstance(config, Mapping) and not hasattr(config, "__getitem__"):
        raise TypeError(
            f"from_config: config must be a ConfigDict or a nested dict, got {type(config)}."
        )
    name = config_field(config, "model.name")
    _compute_dtype(config, supported=name in ("ncsnpp", "ddpm"))
    _group_norm_impl(config, supported=name in ("ncsnpp", "ddpm"))
    if name == "ncsnpp":
        return ncsnpp_from_config(config)
    elif name == "ddpm":
        return ddpm_from_config(config)
    elif name in ("ncsnv2", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256"):
        return ncsnv2_from_config(config)
    elif name == "ncsn":
        return ncsn_from_config(config)
    elif name == "mlp":
        return mlp_from_config(config)
    raise ValueError(f"from_config: config.model.name must be one of {MODEL_NAMES}, got {name!r}.")


def ddpm_from_config(config: Any) -> nn.Module:
    """Builds :class:`~scoresde.models.ddpm.DDPM` (Ho et al.'s U-Net) from ``config.model``.

    Reads ``model.{nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv,
    nonlinearity, scale_by_sigma, sigma_min, sigma_max, num_scales}``, ``data.centered`` and
    the optional ``model.dtype`` (``"float32"``, the default, or ``"bfloat16"`` compute). As
    in the reference, the network is always conditioned on the time label
    (``model.conditional`` is not read).

    Example:
      >>> cfg = {"model": {"name": "ddpm", "nf": 32, "ch_mult": [1, 2],
      ...                  "num_res_blocks": 1, "attn_resolutions": [8]},
      ...        "data": {"centered": True}}
      >>> ddpm_from_config(cfg).ch_mult
      (1, 2)
    """
    from scoresde.models.ddpm import DDPM

    defaults = DDPM.__dataclass_fields__

    def f(name: str) -> Any:
        return config_field(config, f"model.{name}", defaults[name].default)

    return DDPM(
        nf=int(f("nf")),
        ch_mult=_as_int_tuple(f("ch_mult"), "model.ch_mult"),
        num_res_blocks=int(f("num_res_blocks")),
        attn_resolutions=_as_int_tuple(f("attn_resolutions"), "model.attn_resolutions"),
        dropout=float(f("dropout")),
        resamp_with_conv=bool(f("resamp_with_conv")),
        centered=bool(config_field(config, "data.centered", defaults["centered"].default)),
        nonlinearity=str(f("nonlinearity")),
        scale_by_sigma=bool(f("scale_by_sigma")),
        sigma_min=float(f("sigma_min")),
        sigma_max=float(f("sigma_max")),
        num_scales=int(f("num_scales")),
        dtype=_compute_dtype(config),
        group_norm_impl=_group_norm_impl(config),
    )


def _refinenet_kwargs(config: Any, cls: type, family: str) -> dict[str, Any]:
    """The shared fields of NCSN / NCSNv2, with the reference's fixed choices checked."""
    defaults = cls.__dataclass_fields__

    def f(name: str, default: Any) -> Any:
        return config_field(config, f"model.{name}", default)

    normalization = f("normalization", "InstanceNorm++")
    if normalization != "InstanceNorm++":
        raise ValueError(
            f"config: model.normalization must be 'InstanceNorm++' for {family} (the only "
            f"normalization of the reference configs), got {normalization!r}."
        )
    interpolation = f("interpolation", "bilinear")
    if interpolation != "bilinear":
        raise ValueError(
            f"config: model.interpolation must be 'bilinear' for {family}, got {interpolation!r}."
        )
    # The reference reads data.channels, which its configs never define: fall back to
    # data.num_channels. The networks take the channel count from their input.
    channels = config_field(config, "data.channels", None)
    num_channels = config_field(config, "data.num_channels", None)
    if channels is not None and num_channels is not None and int(channels) != int(num_channels):
        raise ValueError(
            f"config: data.channels = {channels} and data.num_channels = {num_channels} disagree."
        )
    return dict(
        nf=int(f("nf", defaults["nf"].default)),
        centered=bool(config_field(config, "data.centered", defaults["centered"].default)),
        nonlinearity=str(f("nonlinearity", defaults["nonlinearity"].default)),
        sigma_min=float(f("sigma_min", defaults["sigma_min"].default)),
        sigma_max=float(f("sigma_max", defaults["sigma_max"].default)),
        num_scales=int(f("num_scales", defaults["num_scales"].default)),
        scale_by_sigma=bool(f("scale_by_sigma", defaults["scale_by_sigma"].default)),
    )


def ncsnv2_from_config(config: Any) -> nn.Module:
    """Builds :class:`~scoresde.models.ncsnv2.NCSNv2` (``ncsnv2_64``, ``_128``, ``_256``).

    Reads ``model.{name, nf, nonlinearity, sigma_min, sigma_max, num_scales, scale_by_sigma,
    normalization, interpolation}`` and ``data.{centered, image_size, channels or
    num_channels}``. ``model.name`` ``ncsnv2_64`` / ``ncsnv2_128`` / ``ncsnv2_256`` picks the
    network; a bare ``ncsnv2`` picks it by ``data.image_size`` (below 96, up to 128, up to
    256) as the reference's ``get_network`` does. ``model.ch_mult``, ``num_res_blocks`` and
    ``attn_resolutions`` do not apply (the architectures are fixed), as in the reference.

    Example:
      >>> cfg = {"model": {"name": "ncsnv2_64", "nf": 16, "num_scales": 232},
      ...        "data": {"centered": False, "image_size": 32, "num_channels": 3}}
      >>> ncsnv2_from_config(cfg).num_scales
      232
    """
    from scoresde.models.ncsnv2 import NCSNV2_VARIANTS, NCSNv2

    name = config_field(config, "model.name", "ncsnv2")
    if name == "ncsnv2":
        size = int(config_field(config, "data.image_size"))
        if not 0 < size <= max(NCSNV2_VARIANTS):
            raise ValueError(
                f"config: NCSNv2 networks exist for data.image_size up to "
                f"{max(NCSNV2_VARIANTS)}, got {size}."
            )
        variant = 64 if size < 96 else 128 if size <= 128 else 256
    else:
        names = {f"ncsnv2_{v}": v for v in NCSNV2_VARIANTS}
        if name not in names:
            raise ValueError(
                f"config: model.name must be 'ncsnv2' or one of {tuple(names)} for NCSNv2, "
                f"got {name!r}."
            )
        variant = names[name]
    return NCSNv2(variant=variant, **_refinenet_kwargs(config, NCSNv2, "NCSNv2"))


def ncsn_from_config(config: Any) -> nn.Module:
    """Builds :class:`~scoresde.models.ncsnv2.NCSN` (NCSN v1, the reference's ``ncsn``).

    Reads the same fields as :func:`ncsnv2_from_config`; ``model.num_scales`` is also the
    number of rows of the conditional normalizations' embeddings.

    Example:
      >>> cfg = {"model": {"name": "ncsn", "nf": 16, "num_scales": 10, "sigma_max": 1},
      ...        "data": {"centered": False, "image_size": 32, "num_channels": 3}}
      >>> ncsn_from_config(cfg).sigma_max
      1.0
    """
    from scoresde.models.ncsnv2 import NCSN

    return NCSN(**_refinenet_kwargs(config, NCSN, "NCSN"))


def mlp_from_config(config: Any) -> nn.Module:
    """Builds :class:`~scoresde.models.mlp.ScoreMLP` (toy 2-D data) from ``config.model``.

    Reads ``model.{nf, num_layers, embedding_type, fourier_scale, scale_by_sigma,
    nonlinearity}``.

    Example:
      >>> mlp_from_config({"model": {"name": "mlp", "nf": 64, "num_layers": 2}}).nf
      64
    """
    from scoresde.models.mlp import ScoreMLP

    defaults = ScoreMLP.__dataclass_fields__

    def f(name: str) -> Any:
        return config_field(config, f"model.{name}", defaults[name].default)

    return ScoreMLP(
        nf=int(f("nf")),
        num_layers=int(f("num_layers")),
        embedding_type=str(f("embedding_type")),
        fourier_scale=float(f("fourier_scale")),
        scale_by_sigma=bool(f("scale_by_sigma")),
        nonlinearity=str(f("nonlinearity")),
    )
