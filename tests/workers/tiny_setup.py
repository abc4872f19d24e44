"""A tiny score model, toy data and train step shared by the subprocess workers and tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd

DIM = 2
GLOBAL_BATCH = 8


class TinyScoreNet(nn.Module):
    """An MLP ``(x, labels) -> output`` following the library's network call convention."""

    width: int = 16

    @nn.compact
    def __call__(self, x, labels, train=False):
        h = jnp.concatenate([x, jnp.log1p(labels)[:, None].astype(x.dtype)], axis=-1)
        h = nn.swish(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(h)


def data_batch(i: int, batch_size: int = GLOBAL_BATCH) -> np.ndarray:
    """The deterministic global batch number ``i`` (a two-blob toy distribution)."""
    rng = np.random.default_rng(1000 + i)
    centers = rng.choice(np.array([[-1.0, 0.5], [1.0, -0.5]]), size=batch_size)
    return (centers + 0.2 * rng.standard_normal((batch_size, DIM))).astype(np.float32)


def batches(rows: slice | None = None):
    """The data pipeline of the workers: position ``{"next": i}``, rows of this process."""

    def make(data_state):
        i = 0 if data_state is None else int(data_state["next"])
        while True:
            x = data_batch(i)
            yield (x if rows is None else x[rows]), {"next": i + 1}
            i += 1

    return make


def setup(mesh=None, n_jitted_steps: int = 1, seed: int = 0):
    """Fresh train state and train step for the tiny model (VP SDE, likelihood-weighted IS)."""
    net = TinyScoreNet()
    x = jnp.zeros((GLOBAL_BATCH, DIM))
    params = net.init(jax.random.key(seed), x, jnp.ones(GLOBAL_BATCH))["params"]
    opt = sd.make_optimizer(lr=1e-2, warmup=2, grad_clip=1.0)
    loss_fn = sd.get_model_loss_fn(
        sd.VPSDE(), net, likelihood_weighting=True, importance_sampling=True, reduce_mean=True
    )
    step = sd.make_train_step(loss_fn, opt, ema_rate=0.9, n_jitted_steps=n_jitted_steps, mesh=mesh)
    state = sd.TrainState.create(params, opt, seed + 1)
    return state, step
