"""Running a sampler with its batch sharded over the local devices.

The samplers stay pure single-program functions; :func:`sample_sharded` jits one of them
over a one-axis device mesh, constrains every score evaluation (the expensive part) to be
split along the batch axis, and returns the samples sharded the same way. The random
draws are those of the unsharded program (JAX's threefry generator is partitionable), so
the same key gives the same samples on one device or many; batch-wide reductions (the
batch-averaged Langevin step) are global over the mesh, as on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scoresde.sde import SDE, ScoreFn

#: Name of the mesh axis the batch is split over.
BATCH_AXIS = "batch"


def sample_sharded(
    sampler: Callable,
    key: jax.Array,
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    *,
    devices: Sequence[jax.Device] | None = None,
    **sampler_kwargs,
) -> tuple[jax.Array, jax.Array]:
    """Runs ``sampler(key, sde, score_fn, shape, **sampler_kwargs)`` over all local devices.

    Args:
      sampler: :func:`scoresde.sample_pc`, :func:`scoresde.sample_ode`,
        :func:`scoresde.sample_sde`, or any function with that signature.
      key: PRNG key (the same key gives the same samples as the unsharded sampler).
      sde: the forward SDE.
      score_fn: ``score_fn(x, t)``.
      shape: ``(B, *dims)`` with ``B`` divisible by the number of devices.
      devices: the devices to use (default ``jax.local_devices()``).
      **sampler_kwargs: passed to ``sampler``.

    Returns:
      ``(x, nfe)``: ``x`` sharded over the devices along the batch axis.

    Example:
      >>> import jax, jax.numpy as jnp, scoresde as sd
      >>> sde = sd.VPSDE(N=20)
      >>> x, nfe = sd.sample_sharded(sd.sample_pc, jax.random.key(0), sde, lambda x, t: -x,
      ...                            (4, 2), corrector="none")
      >>> x.shape, int(nfe)
      ((4, 2), 20)
    """
    devices = list(jax.local_devices() if devices is None else devices)
    shape = tuple(int(s) for s in shape)
    if not devices:
        raise ValueError("sample_sharded: devices must not be empty.")
    if len(shape) < 1 or shape[0] % len(devices):
        raise ValueError(
            f"sample_sharded: the batch size shape[0] must be divisible by the number of "
            f"devices ({len(devices)}), got shape={shape}."
        )
    mesh = Mesh(np.asarray(devices), (BATCH_AXIS,))
    batch = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharded_score(x, t):
        x = jax.lax.with_sharding_constraint(x, batch)
        t = jax.lax.with_sharding_constraint(t, batch)
        return jax.lax.with_sharding_constraint(score_fn(x, t), batch)

    def run(key):
        x, nfe = sampler(key, sde, sharded_score, shape, **sampler_kwargs)
        return jax.lax.with_sharding_constraint(x, batch), nfe

    return jax.jit(run, out_shardings=(batch, replicated))(key)
