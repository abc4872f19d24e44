"""Tests for scoresde.train and scoresde.train_loop (in-process, one CPU device).

Device-count and multi-host equivalence run in subprocesses: tests/test_multihost.py.
Kill-and-resume runs in subprocesses: tests/test_checkpoints.py.
"""

from __future__ import annotations

import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scoresde as sd
from scoresde.train import check_finite

sys.path.insert(0, str(pathlib.Path(__file__).parent / "workers"))
from tiny_setup import GLOBAL_BATCH, batches, data_batch, setup  # noqa: E402

ONE_DEVICE = sd.data_mesh(jax.devices()[:1])


def _adam_state(opt_state):
    is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)  # noqa: E731
    return next(s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s))


def test_optimizer_warmup_matches_reference_schedule():
    """Adam on a linear loss moves each parameter by lr_k = lr min(k/warmup, 1) per update."""
    lr, warmup = 0.1, 4
    opt = sd.make_optimizer(lr=lr, warmup=warmup, eps=1e-12, grad_clip=-1.0)
    params = jnp.zeros(3)
    grad = jnp.array([2.0, -3.0, 0.5])
    state = opt.init(params)
    moves = []
    for _ in range(6):
        updates, state = opt.update(grad, state, params)
        moves.append(np.asarray(updates))
        params = optax.apply_updates(params, updates)
    # for a constant gradient, bias-corrected Adam's direction is exactly -sign(g)
    expected = [-lr * min(k / warmup, 1.0) * np.sign(grad) for k in range(6)]
    # float32 bias corrections 1 - beta^k carry ~1e-5 relative error
    np.testing.assert_allclose(np.array(moves), np.array(expected), rtol=3e-5, atol=1e-9)


@pytest.mark.parametrize("grad_clip", [1.0, -1.0])
def test_optimizer_clips_global_norm(grad_clip):
    opt = sd.make_optimizer(warmup=0, grad_clip=grad_clip, beta1=0.9)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # global norm 5
    _, state = opt.update(grads, opt.init(params), params)
    scale = 1.0 / 5.0 if grad_clip > 0 else 1.0  # g c / max(|g|, c)
    mu = _adam_state(state).mu  # first moment after one update: (1 - beta1) g_clipped
    np.testing.assert_allclose(mu["a"], 0.1 * scale * grads["a"], rtol=1e-6)
    np.testing.assert_allclose(mu["b"], 0.1 * scale * grads["b"], rtol=1e-6)


def test_optimizer_clip_norm_spans_large_and_small_leaves(np_rng):
    """Large leaves (>= 2**16 entries) are reduced one by one, small ones concatenated: the
    clip must still use the norm of all entries together."""
    grads = {
        "kernel": jnp.asarray(np_rng.normal(size=(3, 3, 96, 96)), jnp.float32),  # 82,944 entries
        "bias": jnp.asarray(np_rng.normal(size=(96,)), jnp.float32),
        "scale": jnp.asarray(np_rng.normal(size=(7,)), jnp.float32),
    }
    flat = np.concatenate([np.asarray(g, np.float64).ravel() for g in grads.values()])
    norm = np.linalg.norm(flat)  # ~288
    opt = sd.make_optimizer(warmup=0, grad_clip=1.0, beta1=0.9)
    params = jax.tree.map(jnp.zeros_like, grads)
    _, state = opt.update(grads, opt.init(params), params)
    mu = _adam_state(state).mu
    for name, g in grads.items():
        # float32 sums of ~83k squares: relative error ~1e-6
        np.testing.assert_allclose(mu[name], 0.1 * np.asarray(g) / norm, rtol=1e-5, atol=1e-9)


def test_optimizer_weight_decay_and_errors():
    opt = sd.make_optimizer(lr=0.5, warmup=0, weight_decay=0.1)
    params = jnp.array([1.0, -2.0])
    updates, _ = opt.update(jnp.zeros(2), opt.init(params), params)
    np.testing.assert_allclose(updates, -0.5 * 0.1 * params, rtol=1e-6)  # zero grad: decay only
    for kwargs, name in [
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"lr": -1.0}, "lr"),
        ({"beta2": 1.0}, "beta2"),
        ({"warmup": 1.5}, "warmup"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ]:
        with pytest.raises(ValueError, match=name):
            sd.make_optimizer(**kwargs)


def test_ema_update_is_the_reference_average():
    ema = {"w": jnp.array([1.0, 2.0])}
    new = sd.ema_update(ema, {"w": jnp.array([3.0, 6.0])}, 0.75)
    np.testing.assert_allclose(new["w"], [1.5, 3.0])
    # a rate that is an array, traced under jit, takes the same average
    traced = jax.jit(sd.ema_update)(ema, {"w": jnp.array([3.0, 6.0])}, jnp.float32(0.75))
    np.testing.assert_allclose(traced["w"], [1.5, 3.0])


@pytest.mark.parametrize(
    "warmup,grad_clip,weight_decay", [(3, 1.0, 0.0), (0, -1.0, 0.0), (2, 0.5, 0.1), (0, 1.0, 0.1)]
)
@pytest.mark.parametrize("jit", [False, True])
def test_make_optimizer_is_optax_chain_to_the_bit(np_rng, warmup, grad_clip, weight_decay, jit):
    """The per-leaf update (jitted once per leaf shape) repeats optax's chain operation for
    operation, so inside one compiled program (``jit``) updates and state are equal bit for bit,
    over steps inside the warm-up, clipped and not (the gradients' global norm is ~2.6; clipping
    at 0.5 and 1.0 bites). Called eagerly, optax runs op by op while ours runs compiled per
    leaf, where XLA may contract a multiply-add (one rounding instead of two): a few float32
    ulps apart, more where the moment update's two terms nearly cancel, so the eager tolerance
    is 1e-6 of each leaf's largest entry (~8 ulps of it, over four steps)."""
    from scoresde.train import _optax_chain

    kwargs = dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, warmup=warmup)
    ours = sd.make_optimizer(**kwargs, grad_clip=grad_clip, weight_decay=weight_decay)
    chain = _optax_chain(**kwargs, grad_clip=grad_clip, weight_decay=weight_decay)
    shapes = {"conv": (3, 3, 4, 8), "bias": (8,), "norm": {"scale": (8,), "bias": (8,)}}
    params = jax.tree.map(
        lambda s: jnp.asarray(np_rng.normal(size=s), jnp.float32),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )
    state_ours, state_chain = ours.init(params), chain.init(params)
    update_ours = jax.jit(ours.update) if jit else ours.update
    update_chain = jax.jit(chain.update) if jit else chain.update
    for _ in range(4):
        grads = jax.tree.map(
            lambda p: jnp.asarray(np_rng.normal(size=p.shape) * 0.3, p.dtype), params
        )
        u_ours, state_ours = update_ours(grads, state_ours, params)
        u_chain, state_chain = update_chain(grads, state_chain, params)
        assert jax.tree.structure(state_ours) == jax.tree.structure(state_chain)
        for a, b in zip(
            jax.tree.leaves((u_ours, state_ours)),
            jax.tree.leaves((u_chain, state_chain)),
            strict=True,
        ):
            assert a.dtype == b.dtype
            if jit:
                assert np.array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(np.max(np.abs(b))))
        params = optax.apply_updates(params, u_chain)


def test_parameter_update_is_traced_once_per_leaf_shape():
    """~570 leaves, ~26 shapes: the lowered step holds one Adam, one apply and one EMA function
    per distinct leaf shape, called for every leaf (the tracing and lowering time this saves
    is measured by compile_bench.py --lower-for cuda)."""
    params = {
        "a": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "b": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "c": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)},
    }
    loss_fn = lambda p, ms, x, keys: (sum(jnp.sum(v) for v in jax.tree.leaves(p)) * jnp.mean(x), ms)  # noqa: E731
    opt = sd.make_optimizer(warmup=2)
    step = sd.make_train_step(loss_fn, opt, mesh=ONE_DEVICE)
    state = sd.TrainState.create(params, opt, 0)
    text = step.fn.lower(state, jnp.ones((2, 3))).as_text()
    for name in ("_adam_leaf", "_apply_leaf", "_average_leaf"):
        assert len(re.findall(rf"func\.func private @{name}\w*\(", text)) == 4, name  # 4 shapes
        assert len(re.findall(rf"call @{name}\w*\(", text)) == 6, name  # 6 leaves


def _quadratic_loss(params, model_state, x, keys):
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)
    return jnp.mean((x + 0.1 * noise - params["w"]) ** 2), model_state


def test_train_step_update_matches_a_hand_computed_step(key):
    opt = optax.sgd(0.1)
    step = sd.make_train_step(_quadratic_loss, opt, ema_rate=0.5, mesh=ONE_DEVICE)
    params = {"w": jnp.array([0.5, -0.5])}
    state = step.replicate(sd.TrainState.create(params, opt, 7))
    x = jax.random.normal(key, (4, 2))
    new, metrics = step(state, step.shard_batch(x))
    # the keys the step promises: fold_in(fold_in(rng, step), global example index)
    step_key = jax.random.fold_in(jax.random.key(7), 0)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(4))
    (loss, _), grads = jax.value_and_grad(_quadratic_loss, has_aux=True)(params, {}, x, keys)
    w1 = params["w"] - 0.1 * grads["w"]
    assert state.step.is_deleted()  # donated
    assert int(new.step) == 1
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    np.testing.assert_allclose(
        float(metrics["grad_norm"]), float(jnp.linalg.norm(grads["w"])), rtol=1e-6
    )
    np.testing.assert_allclose(new.params["w"], w1, rtol=1e-6)
    np.testing.assert_allclose(new.ema_params["w"], 0.5 * params["w"] + 0.5 * w1, rtol=1e-6)


def test_n_jitted_steps_equals_single_steps():
    state1, step1 = setup(mesh=ONE_DEVICE)
    state3, step3 = setup(mesh=ONE_DEVICE, n_jitted_steps=3)
    state1, state3 = step1.replicate(state1), step3.replicate(state3)
    losses1 = []
    for i in range(3):
        state1, m = step1(state1, step1.shard_batch(data_batch(i)))
        losses1.append(float(m["loss"]))
    state3, m3 = step3(state3, step3.shard_batch(np.stack([data_batch(i) for i in range(3)])))
    assert int(state3.step) == 3 and m3["loss"].shape == (3,)
    # scan and three calls compile to different programs: agreement to float32 rounding
    np.testing.assert_allclose(np.asarray(m3["loss"]), losses1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state3.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_check_finite_names_the_step():
    ok = check_finite(5, {"loss": np.array([1.0, 2.0]), "grad_norm": np.array([1.0, 1.0])})
    np.testing.assert_array_equal(ok["loss"], [1.0, 2.0])
    with pytest.raises(sd.NonFiniteLossError, match="at step 6") as info:
        check_finite(5, {"loss": np.array([1.0, np.nan]), "grad_norm": np.array([1.0, 1.0])})
    assert info.value.step == 6
    with pytest.raises(sd.NonFiniteLossError, match="at step 5"):
        check_finite(5, {"loss": np.array([1.0, 1.0]), "grad_norm": np.array([np.inf, 1.0])})


def _run(workdir, num_steps, pipeline=None, log=None, mesh=ONE_DEVICE, **kw):
    state, step = setup(mesh=mesh)
    logged = {} if log is None else log
    out = sd.run_training(
        state,
        step,
        pipeline or batches(),
        workdir=workdir,
        num_steps=num_steps,
        checkpoint_freq=kw.pop("checkpoint_freq", 2),
        snapshot_freq=kw.pop("snapshot_freq", 5),
        log_fn=lambda i, m: logged.__setitem__(i, m["loss"]),
        **kw,
    )
    return out, logged


def test_run_training_resumes_exactly_in_process(tmp_path):
    full, full_losses = _run(tmp_path / "full", 8)
    _, first = _run(tmp_path / "split", 5)
    resumed, second = _run(tmp_path / "split", 8)
    assert sorted(first) == [1, 2, 3, 4, 5] and sorted(second) == [6, 7, 8]
    assert {**first, **second} == full_losses  # bit-identical floats
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # nothing left to do: returns the restored state without stepping
    again, none = _run(tmp_path / "split", 8)
    assert none == {} and int(again.step) == 8


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poisoned(data_state):
        for x, pos in batches()(data_state):
            if pos["next"] == 6:  # the 6th batch, used by update number 6
                x = np.full_like(x, np.nan)
            yield x, pos

    with pytest.raises(sd.NonFiniteLossError, match="at step 6") as info:
        _run(tmp_path, 10, pipeline=poisoned, checkpoint_freq=1, snapshot_freq=3)
    assert info.value.step == 6
    with sd.CheckpointManager(tmp_path) as mgr:
        assert mgr.latest_step() == 5
        template, _ = setup(mesh=ONE_DEVICE)
        restored, data_state = mgr.restore(template)
    assert int(restored.step) == 5 and data_state == {"next": 5}
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


def test_nan_between_checkpoints_is_caught_one_call_late_with_the_right_step(tmp_path):
    """Metrics are read after the next call is dispatched: between checkpoints a NaN is still
    reported at its own step, every earlier step is logged once and in order, and the newest
    checkpoint is the last one whose own metrics were checked."""

    def poisoned(data_state):
        for x, pos in batches()(data_state):
            if pos["next"] == 7:
                x = np.full_like(x, np.nan)
            yield x, pos

    log = {}
    with pytest.raises(sd.NonFiniteLossError, match="at step 7"):
        _run(
            tmp_path,
            20,
            pipeline=poisoned,
            log=log,
            checkpoint_freq=4,
            snapshot_freq=100,
            async_checkpointing=False,
        )
    order = list(log)
    assert order == [1, 2, 3, 4, 5, 6]
    with sd.CheckpointManager(tmp_path) as mgr:
        assert mgr.latest_step() == 4


def test_train_step_compiler_options_reach_xla():
    """``compiler_options`` are this program's XLA options: an option XLA does not know fails
    the compile naming it (so they are passed on, not dropped), a known one compiles and gives
    the same update as none (this option only tunes the CPU backend's code, not the math:
    the states agree to float32 rounding). The step records what it compiled with."""
    opt = optax.sgd(0.1)
    state0 = sd.TrainState.create({"w": jnp.arange(3.0)}, opt, 0)
    x = jnp.ones((GLOBAL_BATCH, 3))
    bad = sd.make_train_step(
        _quadratic_loss, opt, mesh=ONE_DEVICE, compiler_options={"xla_no_such_option": 1}
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_no_such_option"):
        bad(bad.replicate(state0), bad.shard_batch(x))
    options = {"xla_cpu_enable_fast_min_max": False}
    tuned = sd.make_train_step(_quadratic_loss, opt, mesh=ONE_DEVICE, compiler_options=options)
    plain = sd.make_train_step(_quadratic_loss, opt, mesh=ONE_DEVICE)
    assert dict(tuned.compiler_options) == options and dict(plain.compiler_options) == {}
    got, _ = tuned(tuned.replicate(state0), tuned.shard_batch(x))
    want, _ = plain(plain.replicate(state0), plain.shard_batch(x))
    np.testing.assert_allclose(got.params["w"], want.params["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="compiler_options"):
        sd.make_train_step(_quadratic_loss, opt, compiler_options=[("xla_gpu_autotune_level", 1)])


def test_train_step_argument_errors():
    with pytest.raises(ValueError, match="n_jitted_steps"):
        sd.make_train_step(_quadratic_loss, optax.sgd(0.1), n_jitted_steps=0)
    with pytest.raises(ValueError, match="ema_rate"):
        sd.make_train_step(_quadratic_loss, optax.sgd(0.1), ema_rate=1.5)
    with pytest.raises(ValueError, match="global_batch_size"):
        sd.process_batch_slice(0, mesh=ONE_DEVICE)
    with pytest.raises(ValueError, match="together"):
        sd.initialize_distributed(coordinator_address="localhost:1234")
    with pytest.raises(TypeError, match="optax"):
        sd.TrainState.create({"w": jnp.zeros(1)}, "adam", 0)
    assert sd.process_batch_slice(GLOBAL_BATCH, mesh=ONE_DEVICE) == slice(0, GLOBAL_BATCH)
