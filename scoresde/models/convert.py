"""Strict conversion between score_sde_pytorch state dicts / checkpoints and Flax variables.

:func:`from_score_sde_pytorch` builds the module named by a reference config
(:func:`~scoresde.models.factory.from_config`) and fills its parameters from a PyTorch state
dict, a full reference checkpoint, or a ``.pth`` path. Loading is strict: every missing,
unexpected or wrongly shaped key is listed in one ``ValueError``; nothing loads partially.
:func:`to_score_sde_pytorch` goes the other way.

The interface a network family implements (generic over NCSN++, DDPM, NCSNv2):

- ``torch_key(path: tuple[str, ...]) -> str`` (static or class method): the state-dict key,
  without ``module.``, of the Flax param at ``path``, e.g.
  ``('all_modules_3', 'Conv_0', 'kernel') -> 'all_modules.3.Conv_0.weight'``.
- ``torch_buffers: tuple[str, ...]`` (class attribute): state-dict buffers that are not Flax
  params (e.g. ``('sigmas',)``); they must be present but are not loaded.
- optional ``torch_buffer_values(self) -> dict[str, np.ndarray]``: their values, written by
  :func:`to_score_sde_pytorch` (without it, buffers are left out of the exported dict).
- optional ``torch_frozen(self, path) -> bool``: the param has ``requires_grad=False`` in the
  reference (e.g. NCSN++'s Fourier ``W``), so it is absent from the EMA's ``shadow_params``.
- optional ``torch_transform(path, array) -> array | None`` (static): a custom
  torch-to-Flax array transform for ``path``; ``None`` falls back to the default below. Its
  inverse, for :func:`to_score_sde_pytorch`, is ``torch_inverse_transform(path, array)``.

The default array transform is chosen by the Flax leaf name and rank: a 4-D ``kernel`` is a
conv, torch ``(O, I, kh, kw)`` transposed by ``(2, 3, 1, 0)`` to HWIO; a 2-D ``kernel`` is a
dense layer, torch ``(out, in)`` transposed; everything else (biases, GroupNorm ``scale`` from
``weight``, NIN ``W``/``b``, the Fourier ``W``) is taken as is.

The module is initialized abstractly (:func:`jax.eval_shape`) on ``(1, image_size,
image_size, num_channels)`` zeros and int32 labels ``(1,)``, so families must accept integer
labels at init.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from scoresde.models.factory import config_field, from_config

#: The prefix ``torch.nn.DataParallel`` adds to every key of the reference's checkpoints.
DATA_PARALLEL_PREFIX = "module."

_CHECKPOINT_KEYS = ("model", "ema")

Path = tuple[str, ...]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict: keys must be strings, got {key!r} ({type(key)}).")
        name = key[len(DATA_PARALLEL_PREFIX) :] if key.startswith(DATA_PARALLEL_PREFIX) else key
        if name in out:
            raise ValueError(
                f"state_dict: the key {name!r} appears both with and without the 'module.' prefix."
            )
        out[name] = _to_numpy(value)
    return out


def _load_path(path: str | os.PathLike) -> Mapping[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"from_score_sde_pytorch: no checkpoint file at {os.fspath(path)!r}.")
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "Reading a .pth checkpoint needs PyTorch: pip install 'scoresde[torch]' (or "
            "load it yourself and pass the state dict as a mapping of numpy arrays)."
        ) from e
    loaded = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"from_score_sde_pytorch: {os.fspath(path)!r} holds a {type(loaded).__name__}, "
            "expected a state dict or a checkpoint dict {'model', 'ema', 'optimizer', 'step'}."
        )
    return loaded


def read_state_dict(
    state_dict: Mapping[str, Any] | str | os.PathLike,
) -> tuple[dict[str, np.ndarray], list[np.ndarray] | None]:
    """Normalizes what a user may pass into ``(state dict without 'module.', EMA list or None)``.

    Args:
      state_dict: a mapping name -> array (with or without ``module.``), a reference
        checkpoint ``{'model': ..., 'ema': {'shadow_params': [...]}, ...}``, or a ``.pth`` path.

    Returns:
      The model's state dict as numpy arrays (order kept), and the EMA ``shadow_params`` as a
      list of numpy arrays when the input is a full checkpoint with an EMA, else ``None``.

    Example:
      >>> import numpy as np
      >>> sd, ema = read_state_dict({"module.sigmas": np.ones(3)})
      >>> list(sd), ema
      (['sigmas'], None)
    """
    if isinstance(state_dict, str | os.PathLike):
        state_dict = _load_path(state_dict)
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "from_score_sde_pytorch: state_dict must be a mapping name -> array, a reference "
            f"checkpoint dict, or a path to a .pth file, got {type(state_dict).__name__}."
        )
    ema = None
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        checkpoint = state_dict
        model_sd = checkpoint["model"]
        ema_state = checkpoint.get("ema")
        if ema_state is not None:
            if not isinstance(ema_state, Mapping) or "shadow_params" not in ema_state:
                raise ValueError(
                    "from_score_sde_pytorch: checkpoint['ema'] must be a dict with "
                    f"'shadow_params', got {type(ema_state).__name__}."
                )
            ema = [_to_numpy(p) for p in ema_state["shadow_params"]]
        return _strip_prefix(model_sd), ema
    return _strip_prefix(state_dict), None


def param_shapes(model: nn.Module, image_shape: Sequence[int]) -> dict[Path, jax.ShapeDtypeStruct]:
    """The Flax params of ``model`` as ``{path: ShapeDtypeStruct}``, without computing them.

    Args:
      model: a score network applied as ``model.apply(variables, x, labels, train=...)``.
      image_shape: ``(H, W, C)`` of one image.

    Returns:
      A flat mapping from param path to its abstract shape and dtype.
    """
    x = jnp.zeros((1, *image_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda: model.init(keys, x, labels, train=False))
    others = sorted(set(variables) - {"params"})
    if others:
        raise ValueError(
            f"{type(model).__name__} has variable collections {others} besides 'params'; the "
            "score_sde_pytorch converter only handles 'params'."
        )
    return traverse_util.flatten_dict(dict(variables["params"]))


def _image_shape(config: Any) -> tuple[int, int, int]:
    size = int(config_field(config, "data.image_size"))
    channels = int(config_field(config, "data.num_channels"))
    return size, size, channels


def _default_torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _default_to_flax(path: Path, array: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if path[-1] == "kernel" and array.ndim == 2:
        return array.T
    return array


def _default_to_torch(path: Path, array: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))
    if path[-1] == "kernel" and array.ndim == 2:
        return array.T
    return array


def _mismatch_error(model: nn.Module, missing, unexpected, wrong) -> ValueError:
    lines = [
        f"from_score_sde_pytorch: the state dict does not match {type(model).__name__} "
        f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong shape)."
    ]
    if missing:
        lines.append("missing keys: " + ", ".join(sorted(missing)))
    if unexpected:
        lines.append("unexpected keys: " + ", ".join(sorted(unexpected)))
    for key, want, got in wrong:
        lines.append(f"wrong shape: {key}: expected {want}, got {got}")
    lines.append(
        "Check that the config (model.* and data.image_size/num_channels) is the one the "
        "checkpoint was trained with."
    )
    return ValueError("\n".join(lines))


def load_torch_params(
    model: nn.Module,
    shapes: Mapping[Path, jax.ShapeDtypeStruct],
    state_dict: Mapping[str, np.ndarray],
    ema: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fills the Flax params of ``model`` from a state dict (strict), optionally with EMA weights.

    Args:
      model: a module implementing the converter interface (see the module docstring).
      shapes: its params' paths and shapes (:func:`param_shapes`).
      state_dict: torch key (without ``module.``) -> numpy array, in the reference's order.
      ema: the EMA ``shadow_params`` list (``model.parameters()`` order, trainable params only),
        used instead of the state dict's values for those params.

    Returns:
      The nested Flax ``params`` dict.
    """
    cls = type(model)
    torch_key = cls.torch_key
    buffers = tuple(getattr(cls, "torch_buffers", ()))
    keys = {path: torch_key(path) for path in shapes}
    expected = set(keys.values()) | set(buffers)
    missing = expected - set(state_dict)
    unexpected = set(state_dict) - expected
    custom = getattr(cls, "torch_transform", None)
    converted: dict[Path, np.ndarray] = {}
    wrong = []
    for path, struct in shapes.items():
        key = keys[path]
        if key not in state_dict:
            continue
        array = np.asarray(state_dict[key])
        out = custom(path, array) if custom is not None else None
        if out is None:
            want = _default_torch_shape(path, tuple(struct.shape))
            if tuple(array.shape) != want:
                wrong.append((key, want, tuple(array.shape)))
                continue
            out = _default_to_flax(path, array)
        elif tuple(out.shape) != tuple(struct.shape):
            wrong.append((key, tuple(struct.shape), tuple(out.shape)))
            continue
        converted[path] = out
    if missing or unexpected or wrong:
        raise _mismatch_error(model, missing, unexpected, wrong)

    if ema is not None:
        frozen = getattr(model, "torch_frozen", None)
        frozen_keys = {keys[p] for p in shapes if frozen is not None and frozen(p)}
        path_of = {k: p for p, k in keys.items()}
        trainable = [k for k in state_dict if k in path_of and k not in frozen_keys]
        if len(ema) != len(trainable):
            raise ValueError(
                f"from_score_sde_pytorch: the EMA has {len(ema)} shadow params but the model "
                f"has {len(trainable)} trainable params; the checkpoint does not match the "
                "config (or pass use_ema=False to load the raw weights)."
            )
        for key, array in zip(trainable, ema, strict=True):
            array = np.asarray(array)
            if array.shape != state_dict[key].shape:
                wrong.append((f"ema[{key}]", tuple(state_dict[key].shape), tuple(array.shape)))
                continue
            path = path_of[key]
            out = custom(path, array) if custom is not None else None
            converted[path] = _default_to_flax(path, array) if out is None else out
        if wrong:
            raise _mismatch_error(model, set(), set(), wrong)

    flat = {path: jnp.asarray(converted[path], dtype=shapes[path].dtype) for path in shapes}
    return traverse_util.unflatten_dict(flat)


def from_score_sde_pytorch(
    state_dict: Mapping[str, Any] | str | os.PathLike,
    config: Any,
    use_ema: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a score_sde_pytorch model (state dict, checkpoint, or ``.pth`` path) into Flax.

    Args:
      state_dict: a mapping name -> array (numpy or torch; with or without the
        ``module.`` prefix of ``DataParallel``); a full reference checkpoint
        ``{'model', 'ema', 'optimizer', 'step'}``; or a path to a ``.pth`` file (then torch
        is imported and the file read with ``map_location='cpu'``).
      config: the reference config (``ConfigDict`` or nested dict) the checkpoint was
        trained with; ``model.*`` picks the network, ``data.image_size`` and
        ``data.num_channels`` its input.
      use_ema: with a full checkpoint, load the EMA weights (``ema.shadow_params``, what the
        paper's numbers use); ``False`` loads the raw ``model`` weights. Ignored for a plain
        state dict.

    Returns:
      ``(model, variables)`` with ``variables = {"params": ...}``, ready for
      ``model.apply(variables, x_nhwc, labels, train=False)``.

    Raises:
      ValueError: listing every missing, unexpected and wrongly shaped key at once.

    Example:
      >>> import jax, numpy as np, scoresde as sd
      >>> cfg = {"model": {"name": "ncsnpp", "nf": 16, "ch_mult": [1, 2],
      ...                  "num_res_blocks": 1, "attn_resolutions": [4]},
      ...        "data": {"centered": False, "image_size": 8, "num_channels": 3}}
      >>> model = sd.models.from_config(cfg)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8, 8, 3)), np.ones(1))
      >>> variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)  # any weights
      >>> torch_sd = sd.models.to_score_sde_pytorch(variables, model)
      >>> model2, variables2 = sd.models.from_score_sde_pytorch(torch_sd, cfg)
      >>> bool(jax.tree.all(jax.tree.map(np.array_equal, variables, variables2)))
      True
    """
    model = from_config(config)
    flat_sd, ema = read_state_dict(state_dict)
    shapes = param_shapes(model, _image_shape(config))
    params = load_torch_params(model, shapes, flat_sd, ema if use_ema else None)
    return model, {"params": params}


def to_score_sde_pytorch(
    variables: Mapping[str, Any], model: nn.Module, prefix: str = DATA_PARALLEL_PREFIX
) -> dict[str, np.ndarray]:
    """Exports Flax variables as a score_sde_pytorch state dict (numpy arrays).

    The inverse of :func:`from_score_sde_pytorch`'s array transforms. Keys carry ``prefix``
    (``'module.'``, as the reference's ``DataParallel`` model expects); buffers come from the
    model's ``torch_buffer_values()`` when it has one. The key order is not the reference's,
    which ``load_state_dict`` does not need.

    Args:
      variables: ``{"params": ...}`` of ``model``.
      model: the module (implementing the converter interface).
      prefix: prepended to every key.

    Returns:
      ``{key: numpy array}``; wrap the values with ``torch.from_numpy`` to load them.

    Example:
      >>> import jax, numpy as np, scoresde as sd
      >>> model = sd.models.NCSNpp(nf=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4, 4, 3)), np.ones(1))
      >>> variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
      >>> sd.models.to_score_sde_pytorch(variables, model)["module.all_modules.3.weight"].shape
      (16, 3, 3, 3)
    """
    cls = type(model)
    out: dict[str, np.ndarray] = {}
    values = getattr(model, "torch_buffer_values", None)
    if values is not None:
        for name, value in values().items():
            out[prefix + name] = np.asarray(value)
    custom_inverse = getattr(cls, "torch_inverse_transform", None)
    for path, leaf in traverse_util.flatten_dict(dict(variables["params"])).items():
        array = np.asarray(leaf)
        converted = custom_inverse(path, array) if custom_inverse is not None else None
        out[prefix + cls.torch_key(path)] = (
            _default_to_torch(path, array) if converted is None else converted
        )
    return out
