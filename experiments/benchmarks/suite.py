r"""The scoresde benchmark suite: train step, forward, samplers, likelihood, compile, memory.

One entry point for the figures of ``docs/benchmarks.md``. For each network (NCSN++ cont. of
``ve/cifar10_ncsnpp_continuous.py``, DDPM++ cont. of ``vp/cifar10_ddpmpp_continuous.py``,
randomly initialized, synthetic data already on the device) it measures

- ``forward``: jitted score evaluations, images x NFE per second, at each ``--batches`` size
  and compute dtype (float32 with the platform's default matmul precision, i.e. TF32 on
  Hopper; and bfloat16 compute with float32 parameters), compile time and XLA's compiled
  memory estimate;
- ``train``: the data-parallel train step (:func:`scoresde.make_train_step`, one device,
  the config's ``training.n_jitted_steps`` steps per call unless ``--n-jitted-steps``),
  images per second with calls dispatched back to back (as :func:`scoresde.run_training`
  runs them) and with a wait after every call, the host's dispatch time, compile time,
  peak memory, XLA's FLOP count per image, and model FLOP utilisation (the issue's GFLOP
  counts against ``--peak-tflops`` / ``--peak-tflops-bf16``);
- ``pc``: :func:`scoresde.sample_pc` with reverse diffusion + one Langevin corrector step,
  ``--pc-steps`` steps, wall time (extrapolated to 1000 steps when fewer are run);
- ``ode``: :func:`scoresde.sample_ode` (adaptive Tsit5 at ``--ode-rtol``), NFE, ms per NFE;
- ``likelihood``: :func:`scoresde.bits_per_dim` at ``rtol = atol = 1e-5`` (the measurement
  of ``likelihood_bench.py``), NFE and ms per NFE.

``--devices 1,2`` repeats the train step data-parallel over one and two devices at the same
per-device batch (the scaling figure), all driven by this one process. ``--processes 2``
instead starts one process per GPU (this script again, joined through
:func:`scoresde.initialize_distributed` on localhost; each process sees one GPU, launches only
its own kernels and feeds only its own rows) and runs the train bench over all of them;
process 0 reports.

Each timing: one warm-up call (compilation, timed separately), then ``--repeats`` calls with
``block_until_ready``; the median is reported. A JSON line per measurement goes to stdout
and to ``--out``; a table is printed last.

GPU run (the issue's figures)::

    PYTHONPATH=. python experiments/benchmarks/suite.py --out $OUT/suite.jsonl

CPU smoke run (the configs' ``smoke`` networks, 16x16, seconds)::

    PYTHONPATH=. python experiments/benchmarks/suite.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd
import scoresde.models.attention as attention_module
import scoresde.models.group_norm as gn_module
import scoresde.models.layers as layers_module
import scoresde.models.up_or_down_sampling as fir_module
from scoresde.config_loading import load_config
from scoresde.experiment import loss_fn_from_config
from scoresde.models.group_norm import default_backend_is_cuda

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "ncsnpp_ve": "experiments/configs/ve/cifar10_ncsnpp_continuous.py",
    "ddpmpp_vp": "experiments/configs/vp/cifar10_ddpmpp_continuous.py",
}


def sde_from_model_config(config) -> sd.SDE:
    m = config.model
    name = config.training.sde.lower()
    if name == "vesde":
        return sd.VESDE(float(m.sigma_min), float(m.sigma_max), int(m.num_scales))
    cls = sd.VPSDE if name == "vpsde" else sd.SubVPSDE
    return cls(float(m.beta_min), float(m.beta_max), int(m.num_scales))


def timed(fn, *args, repeats: int):
    """(compile+first-call seconds, median seconds of ``repeats`` further calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def emit(record: dict, out) -> None:
    """Prints a JSON line and appends it to ``out`` (in a multi-process run: process 0 only)."""
    if jax.process_index() != 0:
        return
    record = {
        "date": datetime.date.today().isoformat(),
        "device": jax.local_devices()[0].device_kind,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "shift_after_barrier": gn_module.SHIFT_AFTER_BARRIER,
        "shift_in_kernel": gn_module.SHIFT_IN_KERNEL,
        "fused_attention_at_inference": attention_module.FUSED_AT_INFERENCE,
        "fir_upsample": fir_module._upfirdn2d_polyphase.__name__,
        "materialize_before_downsampling": layers_module.MATERIALIZE_BEFORE_DOWNSAMPLING,
        **record,
    }
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def progress(message: str) -> None:
    """A time-stamped line on stderr, so that a run cut off by a time limit shows how far it got
    (the JSON line of a measurement is only written at its end)."""
    print(f"# {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def local_value(x: jax.Array) -> np.ndarray:
    """This process's copy of a replicated array (also when other processes hold the rest)."""
    return np.asarray(x.addressable_data(0))


def launch_processes(argv: list[str], n: int, timeout_s: float) -> None:
    """Runs this script once per GPU (``--process-id i``), joined on a localhost coordinator.

    Child ``i`` sees the ``i``-th visible GPU (``CUDA_VISIBLE_DEVICES``), or one CPU device
    when ``JAX_PLATFORMS=cpu``. If a child fails, the others are stopped (they would wait in
    a collective forever); raises then, or when the children outlive ``timeout_s``.
    """
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(n)]
    if len(gpus) < n:
        raise ValueError(f"suite.py: --processes {n} but CUDA_VISIBLE_DEVICES={visible!r}.")
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if env.get("JAX_PLATFORMS") == "cpu":
            env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
        else:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        cmd = [sys.executable, os.path.abspath(__file__), *argv]
        cmd += ["--process-id", str(i), "--port", str(port)]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        deadline = time.monotonic() + timeout_s
        while any(proc.poll() is None for proc in procs):
            failed = [i for i, proc in enumerate(procs) if proc.poll() not in (None, 0)]
            if failed:
                code = procs[failed[0]].returncode
                raise RuntimeError(f"suite.py: process {failed[0]} of {n} exited with {code}.")
            if time.monotonic() > deadline:
                raise TimeoutError(f"suite.py: the {n} processes ran past {timeout_s} s.")
            time.sleep(0.5)
        failed = [i for i, proc in enumerate(procs) if proc.returncode != 0]
        if failed:
            code = procs[failed[0]].returncode
            raise RuntimeError(f"suite.py: process {failed[0]} of {n} exited with {code}.")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def network_variant(base, dtype_name: str, group_norm_impl: str):
    """The network with a compute dtype and GroupNorm implementation (where it has them)."""
    fields = {}
    if hasattr(base, "dtype"):
        fields["dtype"] = jnp.dtype(dtype_name)
    if hasattr(base, "group_norm_impl"):
        fields["group_norm_impl"] = group_norm_impl
    return base.clone(**fields)


#: How the forward bench passes the parameters (``--forward-params``).
FORWARD_PARAMS = ("float32", "cast", "cast_auto_layout")


def build_forward(
    config,
    dtype_name: str,
    batch: int,
    group_norm_impl: str = "auto",
    init="jit",
    params: str = "float32",
):
    """(jitted score function, its arguments) for one network, compute dtype and batch.

    ``params``: ``"float32"``, as trained; ``"cast"``, each leaf the network only converts to
    its compute dtype converted once beforehand (``cast_to_compute_dtype``, the same values);
    ``"cast_auto_layout"``, also in the memory layouts XLA chooses for the program (the
    function is jitted with ``Layout.AUTO`` for them; :func:`compile_forward` moves them).
    """
    if params not in FORWARD_PARAMS:
        raise ValueError(f"params must be one of {FORWARD_PARAMS}, got {params!r}")
    sde = sde_from_model_config(config)
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    base, variables = init_network(config, init)
    model = network_variant(base, dtype_name, group_norm_impl)
    x = jax.random.normal(jax.random.key(1), (batch, size, size, ch))
    t = jnp.linspace(0.1, 1.0, batch)

    def f(variables, x, t):
        return sd.get_score_fn(sde, model, variables)(x, t)

    if params != "float32":
        variables = sd.models.cast_to_compute_dtype(f, variables, x, t)
    if params == "cast_auto_layout":
        from jax.experimental.layout import Format, Layout

        return jax.jit(f, in_shardings=(Format(Layout.AUTO), None, None)), (variables, x, t)
    return jax.jit(f), (variables, x, t)


def compile_forward(jf, call_args):
    """(compiled forward, its arguments placed in the input layouts it was compiled for)."""
    compiled = jf.lower(*call_args).compile()
    variables = jax.device_put(call_args[0], compiled.input_formats[0][0])
    return compiled, (variables, *call_args[1:])


def bench_forward(name, config, args, out):
    rows = []
    first_outputs = {}  # (dtype, batch) -> output of the first GroupNorm implementation
    for dtype_name, gn, batch in itertools.product(
        args.dtypes.split(","), args.group_norm_impls.split(","), args.batches
    ):
        jf, call_args = build_forward(config, dtype_name, batch, gn, args.init, args.forward_params)
        what = f"forward {name} {dtype_name} {gn} b{batch}"
        progress(f"{what}: compiling")
        t0 = time.perf_counter()
        compiled, call_args = compile_forward(jf, call_args)
        compile_s = time.perf_counter() - t0
        progress(f"{what}: compiled in {compile_s:.1f} s")
        mem = compiled.memory_analysis()
        temp_gib = None if mem is None else mem.temp_size_in_bytes / 2**30
        hlo = compiled.as_text() or ""
        first, med = timed(compiled, *call_args, repeats=args.repeats)
        # Pipelined: calls dispatched back to back, one wait at the end, so the host's dispatch
        # and the CUDA graph's launch overlap the previous call (as the NFE of a sampler's
        # compiled loop do); the median above waits for each call.
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            y = compiled(*call_args)
        jax.block_until_ready(y)
        pipelined = (time.perf_counter() - t0) / args.repeats
        y = np.asarray(compiled(*call_args), np.float32)
        y0 = first_outputs.setdefault((dtype_name, batch), y)
        rel_diff = float(np.linalg.norm(y - y0) / max(np.linalg.norm(y0), 1e-30))
        rec = {
            "bench": "forward",
            "model": name,
            "dtype": dtype_name,
            "group_norm_impl": gn,
            "forward_params": args.forward_params,
            "init": args.init,
            "batch": batch,
            "median_s": med,
            "img_nfe_per_s": batch / med,
            "pipelined_img_nfe_per_s": batch / pipelined,
            "compile_s": compile_s,
            "xla_temp_gib": temp_gib,
            "finite": bool(np.isfinite(y).all()),
            # the same weights (--init numpy) and inputs in every process: equal norms mean
            # equal outputs across rows of other processes (e.g. --forward-params)
            "output_l2": float(np.linalg.norm(y)),
            "rel_diff_vs_first_impl": rel_diff,
            # Layout changes XLA inserted (inside fusions too), and the kernel's custom calls.
            "hlo_transposes": hlo.count(" transpose("),
            "hlo_copies": hlo.count(" copy("),
            "hlo_custom_calls": hlo.count(" custom-call("),
        }
        emit(rec, out)
        rows.append(rec)
    return rows


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    return None if not cost else float(cost.get("flops", 0.0))


#: Forward+backward GFLOP per image of the full-size CIFAR-10 networks (the performance
#: issue's counts; XLA's cost analysis leaves out cuDNN convolutions on GPU).
MODEL_GFLOP_PER_IMG = {"ncsnpp_ve": 65.25, "ddpmpp_vp": 65.07}


def peak_tflops(args, dtype_name: str) -> float:
    """The measured dense ceiling for the compute dtype (TF32 for float32)."""
    return args.peak_tflops_bf16 if dtype_name == "bfloat16" else args.peak_tflops


def peak_memory_gib() -> float | None:
    """The device allocator's peak bytes in use so far (None where not reported)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def build_train(
    config,
    dtype_name: str,
    batch: int,
    n_jitted_steps: int,
    devices: int = 1,
    group_norm_impl: str = "auto",
    init: str = "jit",
    compiler_options: dict | None = None,
):
    """(train step, replicated state, sharded synthetic batch) for one network and dtype.

    ``batch`` is per device; the step runs data-parallel over the first ``devices`` devices
    (of all processes); this process makes only its own devices' rows. ``compiler_options``
    go to :func:`scoresde.make_train_step`.
    """
    sde = sde_from_model_config(config)
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    base, variables = init_network(config, init)
    model = network_variant(base, dtype_name, group_norm_impl)
    loss_fn = loss_fn_from_config(config, sde, model)
    optimizer = sd.make_optimizer(lr=2e-4, warmup=5000, grad_clip=1.0)
    mesh = sd.data_mesh(jax.devices()[:devices])
    step = sd.make_train_step(
        loss_fn,
        optimizer,
        ema_rate=0.9999,
        n_jitted_steps=n_jitted_steps,
        mesh=mesh,
        compiler_options=compiler_options,
    )
    # A copy: the step donates the state, and the memoized variables serve later benches.
    params = jax.tree.map(jnp.copy, variables["params"])
    state = step.replicate(sd.TrainState.create(params, optimizer, 0))
    n = n_jitted_steps
    mine = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    rows = batch * mine
    shape = (n, rows, size, size, ch) if n > 1 else (rows, size, size, ch)
    key = jax.random.key(2)
    if jax.process_count() > 1:
        key = jax.random.fold_in(key, jax.process_index())
    images = jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)
    return step, state, step.shard_batch({"image": np.asarray(images)})


def compile_with_auto_state_layout(step, state, batch):
    """(compiled step, state placed to match) with the state's device layouts chosen by XLA.

    The experiment behind ``--state-layout auto``: parameters, Adam moments and EMA are stored
    in whatever physical layout XLA prefers (e.g. cuDNN's output-channel-major filters)
    instead of row-major, so the step need not transpose the convolution kernels and their
    gradients. The output layout is pinned to the chosen input layout, so the donated state
    can be fed back call after call.
    """
    from jax.experimental.layout import Format, Layout
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    replicated = NamedSharding(step.mesh, P())
    batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
    auto = jax.tree.map(lambda _: Format(Layout.AUTO, replicated), state)

    def jitted(state_formats):
        return jax.jit(
            step.fn.__wrapped__,  # the shard_map-ed step, before jit
            in_shardings=(state_formats, batch_shardings),
            out_shardings=(state_formats, replicated),
            donate_argnums=(0,),
            compiler_options=dict(step.compiler_options) or None,
        )

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    chosen = jitted(auto).lower(abstract, batch).compile().input_formats[0][0]
    compiled = jitted(chosen).lower(abstract, batch).compile()
    return compiled, jax.device_put(state, chosen)


def bench_train(name, config, args, out):
    n = args.n_jitted_steps or int(config.training.n_jitted_steps)
    rows = []
    for dtype_name, gn, devices in itertools.product(
        args.dtypes.split(","), args.group_norm_impls.split(","), args.devices
    ):
        batch = args.train_batch * devices
        step, state, batch_arr = build_train(
            config,
            dtype_name,
            args.train_batch,
            n,
            devices,
            gn,
            args.init,
            args.train_compiler_options,
        )
        what = f"train {name} {dtype_name} {gn} x{devices}"
        progress(f"{what}: compiling")
        t0 = time.perf_counter()
        if args.state_layout == "auto":
            compiled, state = compile_with_auto_state_layout(step, state, batch_arr)
        else:
            compiled = step.fn.lower(state, batch_arr).compile()
        compile_s = time.perf_counter() - t0
        progress(f"{what}: compiled in {compile_s:.1f} s")
        flops_per_img = None
        try:
            f = _flops(compiled)
            flops_per_img = None if f is None else f / (batch * n)
        except Exception as e:  # cost analysis is best-effort across backends
            print(f"# cost analysis unavailable: {e}", file=sys.stderr)
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch_arr)
        jax.block_until_ready(metrics)
        first_s = time.perf_counter() - t0
        progress(f"{what}: first call {first_s:.2f} s; timing {args.repeats} calls twice")
        first_loss = float(local_value(metrics["loss"]).ravel()[0])
        # Synchronized: one call at a time (the device idles while the host dispatches).
        times, dispatch = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch_arr)
            dispatch.append(time.perf_counter() - t0)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        # Pipelined: calls dispatched back to back, as run_training does (it reads each
        # call's metrics only after dispatching the next), one wait at the end.
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            state, metrics = compiled(state, batch_arr)
        jax.block_until_ready((state, metrics))
        pipelined = (time.perf_counter() - t0) / args.repeats
        img_s = batch * n / pipelined
        # The part of the dispatch time that is argument handling alone: a trivial program
        # over the same state and batch.
        touch = jax.jit(lambda st, b: st.step + jax.tree.leaves(b)[0].ravel()[0].astype(int))
        jax.block_until_ready(touch(state, batch_arr))
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out_touch = touch(state, batch_arr)
        trivial_ms = 1e3 * (time.perf_counter() - t0) / args.repeats
        jax.block_until_ready(out_touch)
        model_gflop = MODEL_GFLOP_PER_IMG.get(name) if not args.smoke else None
        rec = {
            "bench": "train",
            "model": name,
            "dtype": dtype_name,
            "group_norm_impl": gn,
            "init": args.init,
            "batch": batch,
            "devices": devices,
            "processes": jax.process_count(),
            "n_jitted_steps": n,
            "state_layout": args.state_layout,
            "compiler_options": dict(step.compiler_options),
            "group_norm_kernel_eligible": default_backend_is_cuda(),
            "median_s": pipelined,
            "img_per_s": img_s,
            "synced_median_s": med,
            "synced_img_per_s": batch * n / med,
            "dispatch_ms": 1e3 * statistics.median(dispatch),
            "trivial_dispatch_ms": trivial_ms,
            "state_leaves": len(jax.tree.leaves(state)),
            "compile_s": compile_s,
            "first_step_s": first_s,
            "peak_gib": peak_memory_gib(),
            "xla_gflop_per_img": None if flops_per_img is None else flops_per_img / 1e9,
            "model_gflop_per_img": model_gflop,
            "mfu": None
            if model_gflop is None
            else model_gflop * 1e9 * img_s / (devices * peak_tflops(args, dtype_name) * 1e12),
            "first_loss": first_loss,
            "loss": float(local_value(metrics["loss"]).ravel()[-1]),
        }
        emit(rec, out)
        rows.append(rec)
        del state, batch_arr, compiled
    return rows


_INITIALIZED: dict[str, tuple] = {}


def numpy_init(abstract, fourier_scale: float, seed: int = 0):
    """Random variables shaped like ``abstract``, drawn on the host.

    Kernels (2-D and up) get the fan-average uniform variance scaling of the configs'
    ``init_scale = 1``, GroupNorm scales 1, biases 0, other 1-D leaves (the Fourier
    frequencies) ``N(0, fourier_scale^2)``. The same distributions as ``model.init`` up to
    the per-layer ``init_scale``, without compiling it (about a minute per full-size network
    on the GPU machine); timings do not depend on the weights' exact values.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        last = str(getattr(path[-1], "key", path[-1]))
        if a.ndim >= 2:
            receptive = int(np.prod(a.shape[:-2]))
            fan_avg = receptive * (a.shape[-2] + a.shape[-1]) / 2
            limit = np.sqrt(3.0 / fan_avg)
            return jnp.asarray(rng.uniform(-limit, limit, a.shape).astype(a.dtype))
        if last == "scale":
            return jnp.ones(a.shape, a.dtype)
        if last in ("bias", "b"):
            return jnp.zeros(a.shape, a.dtype)
        return jnp.asarray((fourier_scale * rng.standard_normal(a.shape)).astype(a.dtype))

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def init_network(config, init: str = "jit"):
    """(network, randomly initialized variables) of a config.

    ``init="jit"``: ``model.init`` under jit; ``"numpy"``: :func:`numpy_init` on the host.
    Memoized per config and method within the process: compiling ``model.init`` of a
    full-size network takes about a minute on the GPU machine, and every bench of a model
    uses the same weights.
    """
    key = (config.to_json(), init)
    if key not in _INITIALIZED:
        size, ch = int(config.data.image_size), int(config.data.num_channels)
        model = sd.models.from_config(config)
        init_args = (jax.random.key(0), jnp.zeros((1, size, size, ch)), jnp.ones((1,)))
        if init == "numpy":
            abstract = jax.eval_shape(functools.partial(model.init, train=False), *init_args)
            scale = float(config.model.get("fourier_scale", 16.0))
            variables = numpy_init(abstract, scale)
        else:
            variables = jax.jit(model.init, static_argnames="train")(*init_args, train=False)
        _INITIALIZED[key] = (model, variables)
    return _INITIALIZED[key]


def bench_pc(name, config, args, out):
    """The PC sampler, in ``--pc-dtype``; with ``--forward-params cast`` the parameters are
    converted beforehand as in the forward bench (``cast_auto_layout`` is not offered here)."""
    if args.forward_params == "cast_auto_layout":
        raise ValueError("the pc bench takes --forward-params float32 or cast")
    sde = sde_from_model_config(config)
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    base, variables = init_network(config, args.init)
    model = network_variant(base, args.pc_dtype, "auto")
    shape = (args.pc_batch, size, size, ch)
    if args.forward_params == "cast":
        x, t = jnp.zeros(shape), jnp.ones(shape[:1])
        variables = sd.models.cast_to_compute_dtype(
            lambda v, x, t: sd.get_score_fn(sde, model, v)(x, t), variables, x, t
        )

    @jax.jit
    def run(variables, key):
        score_fn = sd.get_score_fn(sde, model, variables)
        return sd.sample_pc(
            key,
            sde,
            score_fn,
            shape,
            predictor="reverse_diffusion",
            corrector="langevin",
            snr=0.16,
            n_corrector_steps=1,
            num_steps=args.pc_steps,
        )

    first, med = timed(run, variables, jax.random.key(3), repeats=args.pc_repeats)
    x, nfe = run(variables, jax.random.key(3))
    rec = {
        "bench": "pc",
        "model": name,
        "dtype": args.pc_dtype,
        "forward_params": args.forward_params,
        "batch": args.pc_batch,
        "num_steps": args.pc_steps,
        "nfe": int(nfe),
        "median_s": med,
        "s_per_1000_steps": med * 1000 / args.pc_steps,
        "compile_plus_first_s": first,
        "finite": bool(jnp.all(jnp.isfinite(x))),
        "sample_l2": float(jnp.linalg.norm(x)),  # equal across processes for equal samples
    }
    emit(rec, out)
    return [rec]


def bench_ode(name, config, args, out):
    """Probability-flow ODE sampling (adaptive Tsit5, ``--ode-rtol``), NFE and wall time."""
    sde = sde_from_model_config(config)
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    model, variables = init_network(config, args.init)
    shape = (args.pc_batch, size, size, ch)

    @jax.jit
    def run(variables, key):
        score_fn = sd.get_score_fn(sde, model, variables)
        return sd.sample_ode(key, sde, score_fn, shape, rtol=args.ode_rtol, atol=args.ode_rtol)

    first, med = timed(run, variables, jax.random.key(3), repeats=1)
    x, nfe = run(variables, jax.random.key(3))
    rec = {
        "bench": "ode",
        "model": name,
        "batch": args.pc_batch,
        "rtol": args.ode_rtol,
        "nfe": int(nfe),
        "median_s": med,
        "ms_per_nfe": 1e3 * med / max(int(nfe), 1),
        "compile_plus_first_s": first,
        "finite": bool(jnp.all(jnp.isfinite(x))),
    }
    emit(rec, out)
    return [rec]


def bench_likelihood(name, config, args, out):
    """Bits/dim through the probability-flow ODE (``likelihood_bench.py``'s measurement)."""
    import likelihood_bench

    lb_args = argparse.Namespace(
        smoke=args.smoke,
        batch=args.pc_batch,
        rtol=1e-5,
        atol=1e-5,
        divergence="rademacher",
        init_scale=args.init_scale,
        repeats=1,
        shared=False,
        compare_solves=False,
    )
    rows = []
    for row in likelihood_bench.bench_model(name, lb_args):
        rec = {"bench": "likelihood", **row, "median_s": row["wall_s"]}
        emit(rec, out)
        rows.append(rec)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny smoke networks for a CPU")
    p.add_argument("--models", default=",".join(CONFIGS))
    p.add_argument("--benches", default="forward,train,pc,ode,likelihood")
    p.add_argument("--batches", default=None, help="forward batch sizes (default 128,512)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--train-batch", type=int, default=None, help="per device")
    p.add_argument(
        "--devices",
        default="1",
        help="train: comma-separated device counts, e.g. 1,2 for the data-parallel scaling",
    )
    p.add_argument(
        "--n-jitted-steps",
        type=int,
        default=None,
        help="train steps per call (default: the config's training.n_jitted_steps, 5 for the "
        "CIFAR-10 configs, as the reference and `scoresde train` run them)",
    )
    p.add_argument(
        "--state-layout",
        default="default",
        choices=("default", "auto"),
        help="train: row-major state, or device layouts chosen by XLA (an experiment; the "
        "compile time then covers two compilations)",
    )
    p.add_argument(
        "--train-compiler-options",
        type=json.loads,
        default={},
        help="train: XLA options for the step program alone, a JSON object, e.g. "
        "'{\"xla_gpu_autotune_level\": 1}' (make_train_step(compiler_options=...))",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="train: one process per GPU, this many, joined on localhost (the train bench "
        "then runs over all their devices; --devices is ignored)",
    )
    p.add_argument("--process-timeout", type=float, default=1800.0, help="seconds, per run")
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--pc-batch", type=int, default=None)
    p.add_argument("--pc-dtype", default="float32", help="pc: the network's compute dtype")
    p.add_argument("--pc-steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=378.0, help="TF32 dense H100, measured")
    p.add_argument("--peak-tflops-bf16", type=float, default=783.0, help="bf16 dense H100")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--init-scale",
        type=float,
        default=1.0,
        help="model.init_scale override: the configs' 0 makes a random network's score ~0, "
        "and the Langevin step size 1/|score|^2 then overflows",
    )
    p.add_argument(
        "--group-norm-impls",
        default="auto",
        help="forward, train: comma-separated GroupNorm implementations of the networks "
        "(auto: the fused kernel on GPUs; xla)",
    )
    p.add_argument(
        "--init",
        default="jit",
        choices=("jit", "numpy"),
        help="forward, train, pc, ode: random weights from model.init (compiled, ~1 min per "
        "network on the GPU) or drawn on the host (suite.numpy_init); the likelihood bench "
        "always runs model.init, so its NFE stay comparable between runs",
    )
    p.add_argument("--pc-repeats", type=int, default=1)
    p.add_argument("--ode-rtol", type=float, default=1e-5, help="ODE sampler rtol = atol")
    p.add_argument(
        "--shift-in-convolution",
        action="store_true",
        help="the ResNet blocks' time-embedding add where XLA puts it by itself, into the "
        "convolution before it as cuDNN's side input (scoresde.models.group_norm."
        "SHIFT_AFTER_BARRIER = False), instead of behind a barrier, fused into the GroupNorm",
    )
    p.add_argument(
        "--forward-params",
        default="float32",
        choices=FORWARD_PARAMS,
        help="forward and pc: the parameters as trained (float32), converted beforehand where "
        "the network only converts them to its compute dtype (cast), and (forward only) also "
        "in the layouts XLA picks for the program (cast_auto_layout)",
    )
    p.add_argument(
        "--xla-attention",
        action="store_true",
        help="at inference in bfloat16 on a GPU, XLA's attention instead of cuDNN's fused "
        "kernel (scoresde.models.attention.FUSED_AT_INFERENCE = False)",
    )
    p.add_argument(
        "--shift-outside-kernel",
        action="store_true",
        help="at inference, the GroupNorm kernel's input is x + shift added by XLA before it "
        "(folded into the convolution as its side input), as in training "
        "(scoresde.models.group_norm.SHIFT_IN_KERNEL = False), instead of the kernel adding "
        "shift as it reads x",
    )
    p.add_argument(
        "--fir-upsample",
        default="stack",
        choices=("stack", "pad", "select"),
        help="how FIR upsampling interleaves its phase images: two stacks and a reshape (the "
        "library's), interior pads summed, or a parity select (fir_bench.py)",
    )
    p.add_argument(
        "--fir-fused-down",
        action="store_true",
        help="let XLA fuse GroupNorm into the FIR downsampling's taps at inference "
        "(scoresde.models.layers.MATERIALIZE_BEFORE_DOWNSAMPLING = False)",
    )
    args = p.parse_args(argv)
    if args.shift_in_convolution:
        gn_module.SHIFT_AFTER_BARRIER = False
    gn_module.SHIFT_IN_KERNEL = not args.shift_outside_kernel
    attention_module.FUSED_AT_INFERENCE = not args.xla_attention
    import fir_bench

    fir_bench.use_upsample_interleave(args.fir_upsample)
    layers_module.MATERIALIZE_BEFORE_DOWNSAMPLING = not args.fir_fused_down
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    if args.processes > 1 and args.process_id is None:
        if args.benches != "train":
            p.error(f"--processes > 1 runs the train bench only; got --benches {args.benches}")
        argv = sys.argv[1:] if argv is None else list(argv)
        launch_processes(argv, args.processes, args.process_timeout)
        return
    if args.process_id is not None:
        sd.initialize_distributed(f"localhost:{args.port}", args.processes, args.process_id)
    smoke = args.smoke
    args.batches = [int(b) for b in (args.batches or ("2" if smoke else "128,512")).split(",")]
    args.train_batch = args.train_batch or (2 if smoke else 128)
    args.devices = [int(d) for d in args.devices.split(",")]
    if args.process_id is not None:
        args.devices = [jax.device_count()]
    args.pc_batch = args.pc_batch or (2 if smoke else 128)
    args.pc_steps = args.pc_steps or (5 if smoke else 1000)
    args.repeats = args.repeats or (2 if smoke else 10)
    out = open(args.out, "a") if args.out else None
    rows = []
    for name in args.models.split(","):
        config = load_config(
            CONFIGS[name] + (":smoke" if smoke else ""),
            overrides=[f"model.init_scale={args.init_scale}"],
        )
        for bench in args.benches.split(","):
            fn = {
                "forward": bench_forward,
                "train": bench_train,
                "pc": bench_pc,
                "ode": bench_ode,
                "likelihood": bench_likelihood,
            }[bench]
            rows += fn(name, config, args, out)
    if jax.process_index() != 0:
        return
    print("\n| bench | model | dtype | GroupNorm | batch | median s | rate |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rate = (
            r.get("img_nfe_per_s")
            or r.get("img_per_s")
            or r.get("s_per_1000_steps")
            or r.get("ms_per_nfe")
        )
        print(
            f"| {r['bench']} | {r['model']} | {r.get('dtype', '')} | "
            f"{r.get('group_norm_impl', '')} | {r['batch']} | "
            f"{r['median_s']:.4f} | {rate:.1f} |"
        )


if __name__ == "__main__":
    main()
