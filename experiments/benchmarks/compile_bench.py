r"""Where the train step's compile time goes: the network's gradient against the whole step.

The cold compile of the NCSN++ float32 train step is ~70 s on an H200 at one step per call,
~11 s of it autotuning (``docs/benchmarks.md``, fifth round). Of the ~36,000 non-trivial
instructions of the lowered step, ~22,000 acted on parameter-shaped tensors: the gradient
norm, clipping, Adam, the learning rate, the update and the EMA, one set per each of ~560
leaves. (Since the thirteenth round the lowered step holds Adam, the update and the EMA once
per distinct leaf shape, called per leaf; XLA inlines the calls, so the optimized program is
as before.) This script compiles, one after another in one process (one step per call, one
device):

- ``warmup``: the gradient of half the loss, to fill XLA's in-memory autotune results, so that
  the measured compiles below share them and none of them pays the convolutions' autotuning;
- ``grad``: ``jax.value_and_grad`` of the training loss (the network's forward and backward,
  no parameter update);
- ``sgd_step``: :func:`scoresde.make_train_step` with ``optax.sgd`` (one multiply-add per
  parameter, plus the EMA);
- ``step``: :func:`scoresde.make_train_step` with :func:`scoresde.make_optimizer` (global-norm
  clip, Adam, learning-rate warm-up), the suite's train step.

Each row: the time to lower (trace to StableHLO) and to compile, and the instruction counts of
the lowered and of the optimized program. ``step - grad`` is what the per-leaf update costs the
compiler. Nothing runs on the device; compiling needs no weights (abstract shapes).

With ``--profile-dir DIR`` each compile runs under :func:`jax.profiler.trace` and its row also
gets a ``profile``: XLA's own trace annotations (HLO pass pipelines, autotuners, LLVM and
ptxas per module) summed by name as self time (an event's duration less its children's on
the same thread), and how long each compiler thread was busy. That says which passes the
compile time goes to and whether code generation runs on one thread or many.

GPU run (``.whl`` carried, as for the suite)::

    PYTHONPATH=. python experiments/benchmarks/compile_bench.py --out $OUT/compile.jsonl

CPU smoke run (the config's ``smoke`` network)::

    PYTHONPATH=. python experiments/benchmarks/compile_bench.py --smoke

``--lower-for cuda`` only traces and lowers (for CUDA, from any machine, GroupNorm ``auto``
tracing as on a CUDA GPU): the Python side of every process start, which the compilation
cache does not save, measured on a CPU::

    PYTHONPATH=. python experiments/benchmarks/compile_bench.py --programs step --lower-for cuda

Whether two trees compile the step to the same optimized program (instruction counts by shape
and opcode; on a CPU, batch 8), the second run naming the first's file::

    PYTHONPATH=. python experiments/benchmarks/compile_bench.py --programs step --batch 8 \
        --signature-out before.json
    PYTHONPATH=. python experiments/benchmarks/compile_bench.py --programs step --batch 8 \
        --compare-signature before.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

import scoresde as sd
import scoresde.models.group_norm as gn_module
from scoresde.config_loading import load_config
from scoresde.experiment import loss_fn_from_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite import CONFIGS, emit, network_variant, sde_from_model_config  # noqa: E402

#: An HLO instruction line: ``name = type op(...)`` (also ``ROOT name = ...``).
_HLO_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+\s*=", re.M)
#: A StableHLO operation line: ``%x = stablehlo.op ...`` or a bare ``stablehlo.op``.
_MLIR_OPERATION = re.compile(r"^\s*(%[\w#:, ]+=\s*)?\"?(stablehlo|chlo|mhlo|sdy)\.", re.M)


def count_hlo_instructions(hlo_text: str) -> int:
    """Instructions of an HLO module's text (every computation, fusions' bodies included).

    Example:
      >>> count_hlo_instructions("ENTRY e {\\n  p = f32[] parameter(0)\\n  ROOT n = f32[] negate(p)\\n}")
      2
    """
    return len(_HLO_INSTRUCTION.findall(hlo_text))


def count_stablehlo_operations(mlir_text: str) -> int:
    """Operations of a StableHLO module's text.

    Example:
      >>> count_stablehlo_operations("%0 = stablehlo.add %a, %b : tensor<f32>\\nreturn %0")
      1
    """
    return len(_MLIR_OPERATION.findall(mlir_text))


def distinct_convolutions(mlir_text: str) -> int:
    """Convolutions of a StableHLO module's text that differ in more than their value names
    (shapes, dimension numbers, windows): what XLA's autotuner tunes once each.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> conv = lambda x, w: jax.lax.conv(x, w, (1, 1), "SAME")
      >>> f = lambda x, w: conv(conv(x, w), w) + conv(x, w[:, :, :1])
      >>> x, w = jnp.ones((1, 2, 4, 4)), jnp.ones((2, 2, 3, 3))
      >>> distinct_convolutions(jax.jit(f).lower(x, w).as_text())
      2
    """
    ops = re.findall(r"stablehlo\.convolution\(.*", mlir_text)
    return len({re.sub(r"%[\w#]+|loc\(.*\)", "", op) for op in ops})


def optimized_signature(hlo_text: str) -> dict[str, int]:
    """``{"<shape> <opcode>": count}`` of an optimized HLO module's instructions: equal for
    two programs that differ only in instruction names and order.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> hlo = jax.jit(lambda x: -(x * 2.0)).lower(jnp.ones(3)).compile().as_text()
      >>> sum(optimized_signature(hlo).values()) == count_hlo_instructions(hlo)
      True
    """
    counts: collections.Counter = collections.Counter()
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ROOT )?\S+ = (\S+) ([\w-]+)\(", line)
        if m:
            counts[f"{m.group(1)} {m.group(2)}"] += 1
    return dict(counts)


def summarise_trace(
    xplane_path: str,
    top: int = 12,
    min_timeline_s: float = 0.5,
    max_depth: int = 5,
    ndigits: int = 3,
) -> dict:
    """Where a traced compile's time went, per host thread pool (from a ``*.xplane.pb``).

    Events on one thread nest (a pass pipeline holds its passes); an event's self time is its
    duration less that of its direct children, so the self times of a thread add up to its
    busy time. Threads are grouped by their pool's name (the thread id dropped). A waiting
    caller keeps the wait as self time: on the GPU, XLA compiles on the calling Python thread
    and hands kernels to be compiled or autotuned to its compile thread pool.

    Returns:
      ``{pool: {"threads": n, "busy_s": summed, "max_busy_s": busiest thread, "self_s":
      [[name, seconds, count], ...] (the ``top`` largest), "timeline": [[start_s, seconds,
      depth, name], ...]}}``. The timeline, kept for a pool of one thread, lists XLA's events
      (not Python frames, which also do not count towards the depth) of depth at most
      ``max_depth`` lasting at least ``min_timeline_s``, starting in seconds from the trace's
      first event. Seconds are rounded to ``ndigits`` digits.

    Example:
      >>> import glob, tempfile, jax, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> lowered = jax.jit(lambda x: jnp.tanh(x) * 2).lower(jnp.ones(3))
      >>> with jax.profiler.trace(d):
      ...     _ = lowered.compile()
      >>> pools = summarise_trace(glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
      >>> all(p["busy_s"] <= p["threads"] * p["max_busy_s"] + 1e-9 for p in pools.values())
      True
    """
    from jax.profiler import ProfileData

    lines = [
        line
        for plane in ProfileData.from_file(xplane_path).planes
        if plane.name.startswith("/host:")
        for line in plane.lines
    ]
    events_of = {
        id(line): sorted(
            ((e.start_ns, e.duration_ns, e.name) for e in line.events), key=lambda e: (e[0], -e[1])
        )
        for line in lines
    }
    t0 = min((ev[0][0] for ev in events_of.values() if ev), default=0.0)
    pools: dict[str, dict] = {}
    for line in lines:
        pool = pools.setdefault(
            re.sub(r"/-?\d+$", "", line.name),
            {"busy": [], "self": collections.Counter(), "count": collections.Counter(), "tl": {}},
        )
        stack: list[tuple[float, str]] = []  # (end, name) of the open events
        busy_ns, timeline = 0.0, []
        for start, duration, name in events_of[id(line)]:
            while stack and stack[-1][0] <= start:
                stack.pop()
            if stack:
                pool["self"][stack[-1][1]] -= duration
            else:
                busy_ns += duration
            depth = sum(not n.startswith("$") for _, n in stack)  # Python frames not counted
            if not name.startswith("$") and depth <= max_depth and duration >= min_timeline_s * 1e9:
                timeline.append(
                    [
                        round((start - t0) / 1e9, ndigits),
                        round(duration / 1e9, ndigits),
                        depth,
                        name,
                    ]
                )
            pool["self"][name] += duration
            pool["count"][name] += 1
            stack.append((start + duration, name))
        if busy_ns:
            pool["busy"].append(busy_ns / 1e9)
            pool["tl"][busy_ns] = timeline
    summary = {}
    for name, pool in pools.items():
        if not pool["busy"]:
            continue
        summary[name] = {
            "threads": len(pool["busy"]),
            "busy_s": round(sum(pool["busy"]), ndigits),
            "max_busy_s": round(max(pool["busy"]), ndigits),
            "self_s": [
                [n, round(v / 1e9, ndigits), pool["count"][n]]
                for n, v in pool["self"].most_common(top)
            ],
            "timeline": pool["tl"][max(pool["tl"])] if len(pool["busy"]) == 1 else [],
        }
    return dict(sorted(summary.items(), key=lambda kv: -kv[1]["max_busy_s"]))


def build_programs(
    config, dtype_name: str, batch: int, group_norm_impl: str, compiler_options: dict | None = None
):
    """``{name: (jitted function, abstract arguments)}``: ``warmup``, ``grad``, ``sgd_step``, ``step``.

    ``compiler_options`` go to :func:`scoresde.make_train_step` (the two step programs).
    """
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    base = sd.models.from_config(config)
    model = network_variant(base, dtype_name, group_norm_impl)
    init = functools.partial(base.init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, ch)), jnp.ones(1))
    params, model_state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    loss_fn = loss_fn_from_config(config, sde_from_model_config(config), model)
    images = jax.ShapeDtypeStruct((batch, size, size, ch), jnp.float32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))

    def half_loss(*loss_args):
        loss, aux = loss_fn(*loss_args)
        return 0.5 * loss, aux

    grad_args = (params, model_state, {"image": images}, keys)
    programs = {
        # the same convolutions as ``grad`` in a program of its own (a multiply more), so that
        # JAX's in-memory cache of compiled programs cannot serve ``grad`` from it
        "warmup": (jax.jit(jax.value_and_grad(half_loss, has_aux=True)), grad_args),
        "grad": (jax.jit(jax.value_and_grad(loss_fn, has_aux=True)), grad_args),
    }
    mesh = sd.data_mesh(jax.devices()[:1])
    optimizers = {
        "sgd_step": optax.sgd(2e-4),
        "step": sd.make_optimizer(lr=2e-4, warmup=5000, grad_clip=1.0),
    }
    for name, optimizer in optimizers.items():
        step = sd.make_train_step(
            loss_fn, optimizer, ema_rate=0.9999, mesh=mesh, compiler_options=compiler_options
        )
        state = jax.eval_shape(
            functools.partial(sd.TrainState.create, optimizer=optimizer, rng=0), params
        )
        programs[name] = (step.fn, (state, {"image": images}))
    return programs


def lower_row(name: str, fn, args, platform: str) -> dict:
    """Tracing (Python to jaxpr) and lowering (jaxpr to StableHLO for ``platform``) times.

    Any platform can be lowered for on any machine; nothing is compiled. The two together
    are what every process pays before XLA sees the program, also when the program then
    comes from the compilation cache (its key is the lowered program).
    """
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lowered = traced.lower(lowering_platforms=(platform,))
    lower_s = time.perf_counter() - t0
    text = lowered.as_text()
    return {
        "program": name,
        "lowering_platform": platform,
        "trace_s": trace_s,
        "lower_s": lower_s,
        "stablehlo_ops": count_stablehlo_operations(text),
        "custom_calls": text.count("stablehlo.custom_call"),
        "all_reduces": text.count("stablehlo.all_reduce"),
        "distinct_convolutions": distinct_convolutions(text),
    }


def compile_row(
    name: str,
    fn,
    args,
    profile_dir: str | None = None,
    signature_out: str | None = None,
    compare_signature: str | None = None,
) -> dict:
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    lower_s = time.perf_counter() - t0
    # a directory of its own, so a trace left from an earlier run is never read back
    trace_dir = None
    if profile_dir:
        os.makedirs(profile_dir, exist_ok=True)
        trace_dir = tempfile.mkdtemp(prefix=name + "-", dir=profile_dir)
        jax.profiler.start_trace(trace_dir)
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    finally:
        compile_s = time.perf_counter() - t0
        if trace_dir:
            jax.profiler.stop_trace()
    row = {
        "program": name,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "stablehlo_ops": count_stablehlo_operations(lowered.as_text()),
        "optimized_hlo_instructions": count_hlo_instructions(compiled.as_text()),
    }
    if signature_out or compare_signature:
        signature = optimized_signature(compiled.as_text())
        if signature_out:
            with open(signature_out, "w") as f:
                json.dump(signature, f, sort_keys=True)
        if compare_signature:
            with open(compare_signature) as f:
                other = json.load(f)
            row["same_optimized_program"] = signature == other
            row["reduce_windows"] = [
                sum(v for k, v in sig.items() if k.endswith(" reduce-window"))
                for sig in (other, signature)
            ]
    if trace_dir:
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        row["profile"] = summarise_trace(path)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ncsnpp_ve", choices=sorted(CONFIGS))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--group-norm-impl", default="auto", choices=("auto", "xla", "pallas"))
    p.add_argument("--smoke", action="store_true", help="the config's smoke network, batch 4")
    p.add_argument(
        "--programs",
        default="warmup,grad,step,sgd_step",
        help="comma-separated, compiled in this order",
    )
    p.add_argument("--out", default=None, help="JSON lines file (appended)")
    p.add_argument(
        "--profile-dir", default=None, help="trace each compile here and summarise the trace"
    )
    p.add_argument(
        "--lower-for",
        default=None,
        choices=("cuda", "rocm", "cpu", "tpu"),
        help="only trace and lower, for this platform (works on any machine); with cuda, "
        "GroupNorm 'auto' traces as on a CUDA machine",
    )
    p.add_argument(
        "--signature-out",
        default=None,
        help="write the optimized program's instruction counts by shape and opcode (JSON; "
        "with several --programs, the last one's)",
    )
    p.add_argument(
        "--compare-signature",
        default=None,
        help="a --signature-out file: the row says whether the optimized program is the same",
    )
    p.add_argument(
        "--train-compiler-options",
        type=json.loads,
        default={},
        help="XLA options of the step programs (make_train_step's compiler_options), a JSON "
        "object, as suite.py's option of the same name",
    )
    args = p.parse_args(argv)
    if args.lower_for == "cuda":
        gn_module.default_backend_is_cuda = lambda: True
    spec = CONFIGS[args.model] + (":smoke" if args.smoke else "")
    config = load_config(spec)
    batch = 4 if args.smoke else args.batch
    programs = build_programs(
        config, args.dtype, batch, args.group_norm_impl, args.train_compiler_options
    )
    common = {
        "bench": "compile",
        "model": args.model + ("-smoke" if args.smoke else ""),
        "dtype": args.dtype,
        "group_norm_impl": args.group_norm_impl,
        "batch": batch,
        "train_compiler_options": args.train_compiler_options,
    }
    names = args.programs.split(",")
    for name in names:
        if name not in programs:
            p.error(f"--programs: unknown program {name!r}; choose from {sorted(programs)}")
    out = open(args.out, "a") if args.out else None  # noqa: SIM115
    try:
        for name in names:
            fn, fn_args = programs[name]
            if args.lower_for:
                row = lower_row(name, fn, fn_args, args.lower_for)
            else:
                row = compile_row(
                    name,
                    fn,
                    fn_args,
                    args.profile_dir,
                    args.signature_out,
                    args.compare_signature,
                )
            emit({**common, **row}, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
