r"""Train state, optimizer, EMA, and the data-parallel training step.

The step is one jitted pure function ``train_step(state, batch) -> (state, metrics)``. It
runs data-parallel as ``jax.jit`` over a one-axis device mesh (axis ``"data"``) with
:func:`jax.shard_map`: the train state is replicated, the global batch is split along its
first axis, each device differentiates the mean loss of its slice, and gradients, losses
and mutable model state are averaged across devices with ``lax.pmean`` (the semantics of
``pmap`` over a leading device axis, written so that the same code spans all local devices
and, with :func:`initialize_distributed`, all devices of all hosts). The state buffers are
donated. ``n_jitted_steps > 1`` runs that many steps per call with ``lax.scan``.

Randomness is reproducible and independent of the device layout: step ``s`` uses the key
``fold_in(rng, s)`` and example ``i`` of the *global* batch the key
``fold_in(fold_in(rng, s), i)``. Each device, and each process, therefore draws different
noise, and the same global batch gives the same losses on 1 device, 4 devices or 2 hosts
(up to the float rounding of the cross-device mean).

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021 (Adam, linear warm-up, gradient clipping, EMA as in its code).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scoresde.losses import ModelLossFn

#: The name of the mesh axis the batch is split along.
DATA_AXIS = "data"


@struct.dataclass
class TrainState:
    """Everything a training run carries from one step to the next.

    Attributes:
      step: number of optimizer updates done so far (int32 scalar).
      params: the network parameters.
      model_state: the network's other variable collections (e.g. ``batch_stats``), ``{}``
        if none.
      opt_state: the optax optimizer state.
      ema_params: exponential moving average of ``params``.
      rng: raw ``uint32`` key data of the run's base PRNG key (``jax.random.key_data``).

    Example:
      >>> import jax.numpy as jnp, optax, scoresde as sd
      >>> state = sd.TrainState.create({"w": jnp.zeros(2)}, optax.sgd(0.1), rng=0)
      >>> int(state.step), state.ema_params["w"].shape
      (0, (2,))
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array

    @classmethod
    def create(
        cls,
        params: Any,
        optimizer: optax.GradientTransformation,
        rng: jax.Array | int,
        model_state: Mapping[str, Any] | None = None,
    ) -> TrainState:
        """A fresh state at step 0: optimizer initialized, EMA equal to ``params``.

        Args:
          params: initial parameters (``variables["params"]``).
          optimizer: any optax gradient transformation.
          rng: the run's base key: a typed or raw PRNG key, or an integer seed.
          model_state: the model's non-parameter collections, if any.

        Returns:
          The :class:`TrainState`.

        Example:
          >>> import jax.numpy as jnp, optax, scoresde as sd
          >>> state = sd.TrainState.create({"w": jnp.zeros(3)}, optax.adam(1e-3), 0)
          >>> int(state.step), state.rng.dtype
          (0, dtype('uint32'))
        """
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                "TrainState.create: optimizer must be an optax.GradientTransformation, got "
                f"{type(optimizer).__name__}."
            )
        if isinstance(rng, int):
            rng = jax.random.key(rng)
        if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        rng = jnp.asarray(rng, jnp.uint32)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=dict(model_state or {}),
            opt_state=optimizer.init(params),
            ema_params=jax.tree.map(jnp.array, params),
            rng=rng,
        )


def ema_update(ema_params: Any, params: Any, rate: float) -> Any:
    r"""One exponential-moving-average update.

    .. math:: \bar\theta \leftarrow r\bar\theta + (1 - r)\theta.

    Args:
      ema_params: the current average.
      params: the new parameters.
      rate: the decay :math:`r \in [0, 1]` (the reference's ``model.ema_rate``, e.g. 0.999).

    Returns:
      The updated average, same structure as ``params``.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sd.ema_update(jnp.zeros(2), jnp.ones(2), 0.9)
      Array([0.1, 0.1], dtype=float32)
    """
    if isinstance(rate, int | float):  # a constant: the jitted per-leaf function below
        return jax.tree.map(functools.partial(_average_leaf, rate=float(rate)), ema_params, params)
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


# The per-leaf arithmetic of the update is jitted: the ~570 leaves of a network have only ~26
# distinct shapes, and JAX traces and lowers a jitted function once per shape and reuses it for
# the other calls (calls that XLA inlines before optimizing, so the compiled program is what the
# inline arithmetic gave). This shortens the tracing and lowering every process pays before XLA
# (or the compilation cache) sees the step; docs/benchmarks.md, thirteenth round.


@functools.partial(jax.jit, static_argnames=("rate",))
def _average_leaf(ema: jax.Array, param: jax.Array, *, rate: float) -> jax.Array:
    return rate * ema + (1.0 - rate) * param


@jax.jit
def _apply_leaf(param: jax.Array, update: jax.Array) -> jax.Array:
    # optax.apply_updates, for one leaf
    return jnp.asarray(param + update).astype(jnp.asarray(param).dtype)


@functools.partial(jax.jit, static_argnames=("b1", "b2", "eps", "weight_decay", "lr"))
def _adam_leaf(
    g: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    param: jax.Array | None,
    clip_scale: jax.Array | None,
    bc1: jax.Array,
    bc2: jax.Array,
    step_size: jax.Array | None,
    *,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    lr: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One leaf of :func:`make_optimizer`'s update: ``(update, mu, nu)``.

    Operation for operation what optax's chain (clip, ``scale_by_adam``,
    ``add_decayed_weights``, ``scale_by_learning_rate``) does to the leaf, with the per-step
    scalars (clip factor, bias corrections ``1 - b**t``, step size) computed once outside.
    """
    if clip_scale is not None:
        g = (g * clip_scale).astype(g.dtype)
    mu = (1 - b1) * (g**1) + b1 * mu
    nu = (1 - b2) * (g**2) + b2 * nu
    u = (mu / bc1.astype(mu.dtype)) / (jnp.sqrt(nu / bc2.astype(nu.dtype) + 0.0) + eps)
    if weight_decay > 0:
        u = u + weight_decay * param
    if step_size is None:
        u = (-1 * lr) * u
    else:
        u = jnp.array(step_size, dtype=u.dtype) * u
    return u, mu, nu


def make_optimizer(
    lr: float = 2e-4,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    warmup: int = 5000,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    r"""Adam with linear warm-up and global-norm clipping, the reference's optimizer.

    Learning rate at update :math:`k = 0, 1, \dots`: :math:`\eta_k = \eta\min(k/w, 1)` (no
    warm-up when ``warmup == 0``). Gradients are clipped to global norm ``grad_clip``:
    :math:`g \leftarrow g\,c/\max(\|g\|, c)`; a negative ``grad_clip`` disables clipping.
    ``weight_decay > 0`` adds :math:`\lambda\theta` to the Adam update before scaling by
    the learning rate (as the reference's flax Adam did; optax's AdamW).

    The update is optax's chain (``clip_by_global_norm``, ``scale_by_adam``,
    ``add_decayed_weights``, ``scale_by_learning_rate``) operation for operation, with the chain's
    state, so it is equal to the chain bit for bit inside a jitted program. Its per-leaf
    arithmetic is one jitted function, traced once per distinct leaf shape rather than once per
    leaf, which shortens the tracing of a train step (a network's ~570 leaves have ~26 shapes).

    Args:
      lr: peak learning rate.
      beta1: Adam's :math:`\beta_1`.
      beta2: Adam's :math:`\beta_2`.
      eps: Adam's :math:`\epsilon`.
      warmup: number of warm-up updates (0 for none).
      grad_clip: global-norm clip threshold; negative to disable.
      weight_decay: decoupled weight decay :math:`\lambda \ge 0`.

    Returns:
      An optax gradient transformation.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> opt = sd.make_optimizer(warmup=10)
      >>> state = opt.init({"w": jnp.zeros(2)})
    """
    where = "make_optimizer"
    for name, value in (("lr", lr), ("eps", eps)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: {name} must be a finite number > 0, got {name}={value!r}.")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
            raise ValueError(f"{where}: {name} must be in [0, 1), got {name}={value!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"{where}: warmup must be an integer >= 0, got warmup={warmup!r}.")
    if not isinstance(grad_clip, int | float) or grad_clip == 0 or not math.isfinite(grad_clip):
        raise ValueError(
            f"{where}: grad_clip must be > 0 (clip threshold) or negative (no clipping), got "
            f"grad_clip={grad_clip!r}."
        )
    if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
        raise ValueError(f"{where}: weight_decay must be >= 0, got weight_decay={weight_decay!r}.")

    chain = _optax_chain(lr, beta1, beta2, eps, warmup, grad_clip, weight_decay)
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else None
    # positions of the chain's states: (clip,) adam, (decay,) learning rate
    adam_at = 1 if grad_clip > 0 else 0
    lr_at = adam_at + (2 if weight_decay > 0 else 1)
    leaf_fn = functools.partial(
        _adam_leaf, b1=beta1, b2=beta2, eps=eps, weight_decay=float(weight_decay), lr=float(lr)
    )

    def update(updates, state, params=None):
        if weight_decay > 0 and params is None:
            raise ValueError("make_optimizer: weight_decay > 0 needs params in update().")
        state = list(state)
        clip_scale = None
        if grad_clip > 0:
            norm = _global_norm(updates)
            clip_scale = jnp.where(norm < grad_clip, 1.0, grad_clip / norm)
        adam = state[adam_at]
        count = optax.safe_increment(adam.count)
        bc1, bc2 = _bias_correction(beta1, count), _bias_correction(beta2, count)
        step_size = None
        if schedule is not None:
            step_size = -1 * schedule(state[lr_at].count)
            state[lr_at] = state[lr_at]._replace(count=optax.safe_increment(state[lr_at].count))
        treedef = jax.tree.structure(updates)
        leaves = [treedef.flatten_up_to(t) for t in (updates, adam.mu, adam.nu)]
        ps = treedef.flatten_up_to(params) if weight_decay > 0 else [None] * treedef.num_leaves
        out = [
            leaf_fn(g, m, v, p, clip_scale, bc1, bc2, step_size)
            for g, m, v, p in zip(*leaves, ps, strict=True)
        ]
        new_updates, mu, nu = (treedef.unflatten([o[i] for o in out]) for i in range(3))
        state[adam_at] = adam._replace(count=count, mu=mu, nu=nu)
        return new_updates, tuple(state)

    return optax.GradientTransformation(chain.init, update)


def _optax_chain(
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    warmup: int,
    grad_clip: float,
    weight_decay: float,
) -> optax.GradientTransformation:
    """:func:`make_optimizer` as optax's chain: the state it keeps, and its update's reference."""
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else lr
    transforms = []
    if grad_clip > 0:
        transforms.append(_clip_by_global_norm(grad_clip))
    transforms.append(optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps))
    if weight_decay > 0:
        transforms.append(optax.add_decayed_weights(weight_decay))
    transforms.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*transforms)


@jax.jit
def _bias_correction(decay: jax.Array, count: jax.Array) -> jax.Array:
    r""":math:`1 - \beta^t`, traced as optax traces it (``decay`` an argument, not a constant)."""
    return 1 - decay**count


# --------------------------------------------------------------------------------------
# devices, hosts and sharding
# --------------------------------------------------------------------------------------


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
) -> None:
    """Joins a multi-host run through :func:`jax.distributed.initialize` (once per process).

    Call it before any other JAX call. With no arguments JAX detects the cluster (SLURM,
    Open MPI, TPU pods, ...); otherwise pass all of ``coordinator_address`` (``host:port``
    of process 0), ``num_processes`` and ``process_id``. Calling it again is a no-op.

    Args:
      coordinator_address: ``host:port`` of the coordinator (process 0).
      num_processes: number of processes in the run.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restrict this process to these local devices.

    Example:
      >>> import scoresde as sd
      >>> sd.initialize_distributed()  # doctest: +SKIP
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "initialize_distributed: pass coordinator_address, num_processes and process_id "
            f"together (or none, to auto-detect), got coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}."
        )
    if num_processes is not None and not (
        isinstance(num_processes, int) and num_processes >= 1 and 0 <= process_id < num_processes
    ):
        raise ValueError(
            "initialize_distributed: need num_processes >= 1 and 0 <= process_id < num_processes, "
            f"got num_processes={num_processes!r}, process_id={process_id!r}."
        )
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )


def data_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over the given devices (default: all devices of all hosts).

    Example:
      >>> import scoresde as sd
      >>> sd.data_mesh().axis_names
      ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh: devices must not be empty.")
    return Mesh(np.array(devices), (DATA_AXIS,))


def process_batch_slice(global_batch_size: int, mesh: Mesh | None = None) -> slice:
    """The rows of a global batch that this process reads (its devices' share).

    Args:
      global_batch_size: batch size summed over all devices; divisible by the mesh size.
      mesh: the data mesh (default :func:`data_mesh`).

    Returns:
      ``slice(start, stop)`` into the global batch.

    Example:
      >>> import jax, scoresde as sd
      >>> sd.process_batch_slice(8 * jax.device_count())
      slice(0, 8, None)
    """
    mesh = data_mesh() if mesh is None else mesh
    n = mesh.devices.size
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise TypeError(
            f"process_batch_slice: global_batch_size must be an int, got {global_batch_size!r}."
        )
    if global_batch_size <= 0 or global_batch_size % n:
        raise ValueError(
            f"process_batch_slice: global_batch_size={global_batch_size} must be a positive "
            f"multiple of the number of devices in the mesh ({n})."
        )
    per_device = global_batch_size // n
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[0] + len(mine))):
        raise ValueError(
            "process_batch_slice: this process's devices must be contiguous in the mesh, got "
            f"positions {mine}."
        )
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """Places a PyTree (e.g. a :class:`TrainState`) replicated on every device of the mesh.

    Every process must pass the same values.

    Example:
      >>> import jax.numpy as jnp, scoresde as sd
      >>> sd.replicate({"w": jnp.ones(2)})["w"].sharding.is_fully_replicated
      True
    """
    mesh = data_mesh() if mesh is None else mesh
    sharding = NamedSharding(mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = _host_value(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def _host_value(x: jax.Array) -> np.ndarray:
    """A replicated array's value on this host (works for multi-host global arrays)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


# --------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------


def _pmean_inexact(tree: Any) -> Any:
    """``lax.pmean`` over the devices of every floating leaf (others pass through).

    One ``psum`` of all the leaves (one traced operation; it lowers to one all-reduce per leaf,
    as ``pmean`` leaf by leaf did), then the division by the number of devices.
    """
    leaves, treedef = jax.tree.flatten(tree)
    at = [i for i, v in enumerate(leaves) if jnp.issubdtype(v.dtype, jnp.inexact)]
    n = jax.lax.axis_size(DATA_AXIS)
    for i, total in zip(at, jax.lax.psum([leaves[i] for i in at], DATA_AXIS), strict=True):
        leaves[i] = total / n
    return treedef.unflatten(leaves)


#: Leaves with fewer entries than this are concatenated into one vector for the global norm;
#: larger ones (a 3x3x128x128 kernel has 147,456) are reduced one by one, each big enough to
#: fill a GPU.
_SMALL_LEAF = 2**16


def _global_norm(tree: Any) -> jax.Array:
    r""":math:`\sqrt{\sum_i g_i^2}` over every entry of every leaf.

    A network has ~1,000 leaves, most of them biases and normalization scales of a few hundred
    entries: one reduction each would be ~1,000 tiny GPU kernels. The small leaves are
    concatenated and reduced once; only the large ones get their own reduction. (Left inline,
    unlike the update's per-leaf functions: behind a call, XLA:CPU's optimized program reduced
    the large leaves differently, where the per-leaf functions leave it unchanged.)
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
    small = [jnp.ravel(g).astype(dtype) for g in leaves if g.size < _SMALL_LEAF]
    sums = [jnp.sum(jnp.square(g.astype(dtype))) for g in leaves if g.size >= _SMALL_LEAF]
    if small:
        sums.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    return jnp.sqrt(sum(sums))


def _clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax's ``clip_by_global_norm`` (same state) with the norm from :func:`_global_norm`."""

    def update(updates, state, params=None):
        del params
        norm = _global_norm(updates)
        scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _local_batch_size(batch: Any, n_jitted_steps: int) -> int:
    leaf = jax.tree.leaves(batch)[0]
    return leaf.shape[1] if n_jitted_steps > 1 else leaf.shape[0]


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted data-parallel step, with the mesh and helpers to feed it.

    Call it as ``state, metrics = train_step(state, batch)``. ``batch`` is the global batch
    ``(B, ...)`` (or ``(n_jitted_steps, B, ...)``), a PyTree of arrays placed by
    :meth:`shard_batch`; ``metrics`` holds ``loss`` and ``grad_norm`` (scalars, or
    ``(n_jitted_steps,)`` arrays), averaged over devices. ``state`` is donated.

    Attributes:
      fn: the jitted ``(state, batch) -> (state, metrics)``.
      mesh: the device mesh.
      n_jitted_steps: updates per call.
      compiler_options: the XLA options ``fn`` compiles with.
    """

    fn: Callable
    mesh: Mesh
    n_jitted_steps: int
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        return self.fn(state, batch)

    def shard_batch(self, local_batch: Any) -> Any:
        """Assembles this process's rows (:func:`process_batch_slice`) into the global batch."""
        spec = P(None, DATA_AXIS) if self.n_jitted_steps > 1 else P(DATA_AXIS)
        sharding = NamedSharding(self.mesh, spec)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
        )

    def replicate(self, state: TrainState) -> TrainState:
        """Places ``state`` replicated on the mesh (see :func:`replicate`)."""
        return replicate(state, self.mesh)


def make_train_step(
    loss_fn: ModelLossFn,
    optimizer: optax.GradientTransformation,
    *,
    ema_rate: float = 0.999,
    n_jitted_steps: int = 1,
    mesh: Mesh | None = None,
    donate: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> TrainStep:
    r"""Builds the jitted, data-parallel training step.

    One update: keys ``fold_in(fold_in(rng, step), i)`` for the global example indices ``i``
    of each device's slice; ``(loss, model_state), grads = value_and_grad(loss_fn)`` on the
    slice; ``pmean`` of loss, grads and model state over devices; the optimizer update;
    :func:`ema_update`; ``step + 1``.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, keys) -> (mean_loss, new_model_state)``,
        e.g. from :func:`scoresde.get_model_loss_fn`; ``keys`` are per-example PRNG keys.
      optimizer: any optax gradient transformation (e.g. :func:`make_optimizer`).
      ema_rate: EMA decay.
      n_jitted_steps: updates per call (``lax.scan`` over a leading batch axis).
      mesh: device mesh with axis ``"data"`` (default :func:`data_mesh`, all devices).
      donate: donate the input state's buffers.
      compiler_options: XLA options for this program alone (``jax.jit``'s
        ``compiler_options``), e.g. ``{"xla_gpu_autotune_level": 1}``; the names are those of
        ``XLA_FLAGS`` without the dashes. An option this XLA does not know fails the first
        call, naming it. ``None``: XLA's defaults (and the process's ``XLA_FLAGS``).

    Returns:
      A :class:`TrainStep`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, scoresde as sd
      >>> loss_fn = lambda p, ms, x, keys: (jnp.mean((x - p["w"]) ** 2), ms)
      >>> opt = optax.sgd(0.1)
      >>> step = sd.make_train_step(loss_fn, opt, mesh=sd.data_mesh(jax.devices()[:1]))
      >>> state = step.replicate(sd.TrainState.create({"w": jnp.zeros(2)}, opt, 0))
      >>> state, metrics = step(state, step.shard_batch(jnp.ones((4, 2))))
      >>> int(state.step), float(metrics["loss"])
      (1, 1.0)
    """
    if (
        isinstance(n_jitted_steps, bool)
        or not isinstance(n_jitted_steps, int)
        or n_jitted_steps < 1
    ):
        raise ValueError(
            f"make_train_step: n_jitted_steps must be an integer >= 1, got {n_jitted_steps!r}."
        )
    if not (isinstance(ema_rate, int | float) and 0.0 <= ema_rate <= 1.0):
        raise ValueError(f"make_train_step: ema_rate must be in [0, 1], got ema_rate={ema_rate!r}.")
    compiler_options = {} if compiler_options is None else compiler_options
    if not isinstance(compiler_options, Mapping) or not all(
        isinstance(k, str) for k in compiler_options
    ):
        raise ValueError(
            "make_train_step: compiler_options must be a mapping from XLA option names to "
            f"values, e.g. {{'xla_gpu_autotune_level': 1}}, got {compiler_options!r}."
        )
    mesh = data_mesh() if mesh is None else mesh
    if DATA_AXIS not in mesh.axis_names or len(mesh.axis_names) != 1:
        raise ValueError(
            f"make_train_step: mesh must have the single axis {DATA_AXIS!r}, got "
            f"{mesh.axis_names}; build it with scoresde.data_mesh(devices)."
        )

    def one_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        local_b = _local_batch_size(batch, 1)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        start = jax.lax.axis_index(DATA_AXIS) * local_b
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(start + jnp.arange(local_b))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, model_state), grads = grad_fn(state.params, state.model_state, batch, keys)
        loss, grads, model_state = _pmean_inexact((loss, grads, model_state))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(  # optax.apply_updates, None leaves included
            lambda p, u: None if p is None else _apply_leaf(p, u),
            state.params,
            updates,
            is_leaf=lambda x: x is None,
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, ema_rate),
        )
        return new_state, {"loss": loss, "grad_norm": _global_norm(grads)}

    def per_device(state, batch):
        if n_jitted_steps == 1:
            return one_step(state, batch)
        return jax.lax.scan(one_step, state, batch)

    batch_spec = P(None, DATA_AXIS) if n_jitted_steps > 1 else P(DATA_AXIS)
    # check_vma=False: gradients w.r.t. the replicated state stay per-device until the
    # explicit pmean above (with the check on, JAX would psum them implicitly).
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), batch_spec),
        out_specs=(P(), P()),
        check_vma=False,
    )
    fn = jax.jit(
        sharded,
        in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, batch_spec)),
        out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P())),
        donate_argnums=(0,) if donate else (),
        compiler_options=dict(compiler_options) or None,
    )
    return TrainStep(
        fn=fn,
        mesh=mesh,
        n_jitted_steps=n_jitted_steps,
        compiler_options=types.MappingProxyType(dict(compiler_options)),
    )


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; ``step`` is the 1-based update number."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        self.step = step
        super().__init__(
            f"non-finite training loss at step {step} (loss={loss}, grad_norm={grad_norm}); "
            "training stopped, the newest checkpoint on disk is the last good one."
        )


def check_finite(first_step: int, metrics: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Host-side check of a call's metrics; raises :class:`NonFiniteLossError` naming the step.

    Args:
      first_step: the 1-based number of the first update of the call.
      metrics: the step's metrics (``loss``, ``grad_norm``; scalars or per-step arrays).

    Returns:
      The metrics as 1-D host arrays (one entry per update).

    Example:
      >>> import numpy as np
      >>> from scoresde.train import check_finite
      >>> check_finite(1, {"loss": np.float32(0.5), "grad_norm": np.float32(1.0)})["loss"]
      array([0.5], dtype=float32)
    """
    host = {k: np.atleast_1d(_host_value(v)) for k, v in metrics.items()}
    ok = np.isfinite(host["loss"]) & np.isfinite(host.get("grad_norm", host["loss"]))
    if not ok.all():
        i = int(np.argmin(ok))
        grad_norm = float(host["grad_norm"][i]) if "grad_norm" in host else float("nan")
        raise NonFiniteLossError(first_step + i, float(host["loss"][i]), grad_norm)
    return host


__all__ = [
    "DATA_AXIS",
    "NonFiniteLossError",
    "TrainState",
    "TrainStep",
    "check_finite",
    "data_mesh",
    "ema_update",
    "initialize_distributed",
    "make_optimizer",
    "make_train_step",
    "process_batch_slice",
    "replicate",
]
