r"""Where the device time of a train step or a forward pass goes: a per-op table.

Traces ``--steps`` calls of the compiled train step (or jitted forward) with
:func:`jax.profiler.trace`, reads the device plane of the trace back with JAX's own profile
reader, and attributes every GPU kernel to its HLO instruction. The optimized HLO of the same
executable gives each instruction's kind (cuDNN convolution, cuBLAS/Triton GEMM, loop or
reduction fusion, copy/transpose, collective) and the JAX source op (``op_name`` metadata,
e.g. ``.../ResnetBlockBigGANpp_3/GroupNorm_1/...``), so the tables say which layers cost what:

- by kernel kind (what the GPU spends its time on),
- by layer type (the Flax module class / op in the source path),
- the ``--top`` most expensive instructions,
- the host's dispatch time per call by thunk kind (CUDA-graph launches, cuDNN convolutions,
  single kernels, PJRT's buffer handling),
- the device's idle time between two waited-for calls, by dispatch stage (GPU traces),
- with ``--trace-compile``, the compiler's passes and autotuners that take the most time.

The trace (``*.xplane.pb``, viewable in XProf/TensorBoard) and the optimized HLO are written
gzipped under ``--out``.

GPU run::

    PYTHONPATH=. python experiments/benchmarks/profile_step.py --model ncsnpp_ve --what train \
        --dtype float32 --out $OUT

CPU smoke run (tiny network; only host-side events exist on a CPU, so the tables are small)::

    PYTHONPATH=. python experiments/benchmarks/profile_step.py --smoke
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import os
import re
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_bench  # noqa: E402  (the compile-trace summary)
import suite  # noqa: E402  (the benchmark suite's builders)

from scoresde.config_loading import load_config  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\}?\s*([\w\-]+)\(")


def hlo_index(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Maps each HLO instruction name to (kind, JAX op_name) from optimized HLO text.

    Each name is entered twice: as written, and with ``.``/``-`` turned into ``_``, the form
    XLA gives the kernels it emits (inside a CUDA-graph command buffer the kernel name is
    the only link back to the fusion).
    """
    index = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, rest = m.group(1), m.group(2)
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        fusion_kind = re.search(r"kind=(k\w+)", rest)
        op = _OPCODE.search(rest.split("metadata=")[0])
        if target:
            kind = target.group(1)
        elif fusion_kind:
            kind = f"fusion:{fusion_kind.group(1)}"
        else:
            kind = op.group(1) if op else "?"
        op_name = re.search(r'op_name="([^"]+)"', rest)
        entry = (kind, op_name.group(1) if op_name else "")
        index[name] = entry
        index.setdefault(re.sub(r"[.\-]", "_", name), entry)
    return index


def lookup(index: dict, hlo_op: str, kernel: str) -> tuple[str, str]:
    """(kind, op_name) of a kernel: by its ``hlo_op`` stat, else by its kernel name."""
    if hlo_op in index and not hlo_op.startswith("command_buffer"):
        return index[hlo_op]
    return index.get(kernel, index.get(hlo_op, ("?", "")))


_CONV_KERNEL_TAGS = ("fprop", "dgrad", "wgrad")
_CONV_TARGETS = ("__cudnn$convForward", "__cudnn$convBiasActivationForward")


def forward_convolution_flops(hlo_text: str) -> float | None:
    r"""FLOPs of one run of the entry computation's cuDNN forward convolutions.

    :math:`2 \cdot |\text{output}| \cdot I \cdot k_h k_w` per convolution, with the kernel's
    input features :math:`I` and window read from its ``dim_labels``. ``None`` when the program
    also holds backward convolutions (a train step), whose kernels the trace does not tell apart.

    Example:
      >>> hlo = (
      ...     "%w = f32[8,3,3,4]{3,2,1,0} parameter(1)\n"
      ...     "%c = (f32[2,5,5,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), "
      ...     'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"'
      ... )
      >>> forward_convolution_flops(hlo) == 2 * (2 * 5 * 5 * 8) * 4 * 3 * 3
      True
    """
    shapes = {
        m.group(1): [int(d) for d in m.group(2).split(",") if d]
        for m in re.finditer(r"%([\w.\-]+) = \(?\w+\[([\d,]*)\]", hlo_text)
    }
    flops = 0.0
    for line in hlo_text.splitlines():
        target = re.search(r'custom_call_target="(__cudnn\$conv\w*)"', line)
        if not target:
            continue
        if target.group(1) not in _CONV_TARGETS:
            return None
        out = re.search(r"= \(?\w+\[([\d,]+)\]", line).group(1)
        operands = re.search(r"custom-call\(([^)]*)\)", line).group(1).split(", ")
        kernel = shapes[operands[1].lstrip("%")]
        labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
        per_output = 1
        for label, size in zip(labels, kernel, strict=True):
            if label != "o":
                per_output *= size
        outputs = 1
        for size in out.split(","):
            outputs *= int(size)
        flops += 2.0 * outputs * per_output
    return flops


def kind_category(kind: str, kernel: str) -> str:
    """A coarse category for a kernel from its HLO kind and kernel name."""
    k, n = kind.lower(), kernel.lower()
    # inside a CUDA graph a kernel has no HLO kind: cuDNN's convolution kernels are known by
    # their names (``..._fprop_implicit_gemm...``, ``dgrad``, ``wgrad``)
    if "conv" in k or "cudnn" in k and "conv" in n or any(t in n for t in _CONV_KERNEL_TAGS):
        return "convolution (cuDNN)"
    if "gemm" in k or "matmul" in k or "cublas" in k or "__triton_gemm" in n or "gemm" in n:
        return "matmul (GEMM)"
    if "fmha" in k or "attention" in k or "flash" in n:
        return "attention kernel"
    if k.startswith("all-reduce") or "nccl" in n or "all-reduce" in k:
        return "collective"
    if "kinput" in k or "reduce" in k:
        return "reduction fusion"
    if "kloop" in k:
        return "elementwise fusion"
    if "copy" in k or "transpose" in k or "kcustom" in k:
        return "copy / transpose / custom fusion"
    return f"other ({kind})"


_LAYER_KEYS = (
    "Dropout",
    "GroupNorm",
    "upfirdn2d",
    "conv_downsample_2d",
    "upsample_conv_2d",
    "Conv",
    "NIN",
    "dot_product_attention",
    "Dense",
    "GaussianFourierProjection",
    "optax",
    "ema",
)


def layer_of(op_name: str) -> str:
    """The most specific known layer/op mentioned in a JAX ``op_name`` path."""
    parts = op_name.split("/")
    for part in reversed(parts):
        for key in _LAYER_KEYS:
            if key.lower() in part.lower():
                return key
    if "transpose(jvp" in op_name or "transpose(" in op_name:
        return "backward (other)"
    return parts[-1][:40] if parts and parts[-1] else "(none)"


def device_events(xplane_path: str):
    """(kernel name, hlo_op, start ns, duration ns) for every kernel on the device planes.

    On a CPU (no device plane) the host's XLA thunks, which carry an ``hlo_op``, stand in.
    """
    from jax._src.lib import _profile_data

    data = _profile_data.ProfileData.from_file(xplane_path)
    device, host = [], []
    for plane in data.planes:
        on_device = plane.name.startswith("/device:")
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                row = (
                    event.name,
                    str(stats.get("hlo_op", "")),
                    float(event.start_ns),
                    float(event.duration_ns),
                )
                if on_device:
                    device.append(row)
                elif "hlo_op" in stats:
                    host.append(row)
    return device or host


def host_summary(xplane_path: str, index: dict, steps: int) -> None:
    """Prints where the host's dispatch time of one call goes, by thunk category.

    XLA's GPU runtime annotates every thunk it executes on the host with its HLO name
    (``cudnn-conv...``, a fusion, or ``command_buffer_N`` for a CUDA graph of many kernels);
    the table sums those annotations per call, plus the part of the PJRT ``Execute`` call
    outside the thunks (argument checks, buffer and output handling).
    """
    from jax._src.lib import _profile_data

    data = _profile_data.ProfileData.from_file(xplane_path)
    time_by, count_by = collections.Counter(), collections.Counter()
    execute = pjrt = 0.0
    for plane in data.planes:
        if plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            covered_until = -1.0  # end of the last counted thunk: skip what it contains
            for event in sorted(line.events, key=lambda e: e.start_ns):
                name = event.name.split("#")[0]
                dur = float(event.duration_ns)
                if "GpuExecutable::ExecuteThunks" in name:
                    execute += dur
                    continue
                if name == "PJRT_LoadedExecutable_Execute":
                    pjrt += dur
                    continue
                if re.fullmatch(r"command_buffer_\d+", name):
                    cat = "CUDA graph (command buffer) launch"
                elif name in index and not name.startswith("command_buffer"):
                    kind = index[name][0]
                    cat = "cuDNN convolution" if "conv" in kind.lower() else f"kernel ({kind})"
                else:
                    continue
                if event.start_ns < covered_until:
                    continue
                covered_until = event.start_ns + dur
                time_by[cat] += dur
                count_by[cat] += 1
    if not execute:
        print("\n# host: no GpuExecutable::ExecuteThunks events in the trace (not a GPU run)")
        return
    thunks = sum(time_by.values())
    print(
        f"\n# host dispatch per call: {pjrt / steps / 1e6:.2f} ms in PJRT Execute, of which "
        f"{execute / steps / 1e6:.2f} ms executing thunks"
    )
    print("\n| host thunk | launches per call | host ms per call |\n|---|---|---|")
    for cat, dur in time_by.most_common():
        print(f"| {cat} | {count_by[cat] / steps:.0f} | {dur / steps / 1e6:.2f} |")
    rows = (
        ("(between thunks)", execute - thunks),
        ("(PJRT: arguments, buffers, outputs)", pjrt - execute),
    )
    for label, dur in rows:
        print(f"| {label} | | {dur / steps / 1e6:.2f} |")


#: Host events that mark the stages of a call's dispatch (on the calling thread), in order.
DISPATCH_STAGES = (
    ("call", "PjitFunction("),
    ("PJRT Execute", "PJRT_LoadedExecutable_Execute"),
    ("launch", "cuGraphLaunch"),
)


def between_calls(kernels: list[tuple[float, float]], host: list[tuple[str, float]]) -> dict:
    """Mean ms of each stage between one call's last kernel and the next call's first.

    ``kernels``: (start, end) ns of the device's kernels; ``host``: (name, start ns) of the
    calling thread's events. For each call after the first (the first
    :data:`DISPATCH_STAGES` event of its kind after the previous call's kernels end), the
    stages are: the previous kernel's end -> the call -> PJRT's ``Execute`` -> the CUDA
    graph's launch -> the first kernel after it. Calls missing a stage are skipped.
    """
    kernels = sorted(kernels)
    marks = {label: sorted(t for n, t in host if n.startswith(prefix))
             for label, prefix in DISPATCH_STAGES}  # fmt: skip
    sums, n = collections.Counter(), 0
    ends = [e for _, e in kernels]
    for launch in marks["launch"]:
        before = [e for e in ends if e <= launch]
        after = [s for s, _ in kernels if s >= launch]
        if not before or not after:
            continue
        prev_end = max(before)
        times = [prev_end]
        for label, _ in DISPATCH_STAGES:
            later = [t for t in marks[label] if times[-1] <= t <= launch]
            if not later:
                break
            times.append(min(later))
        else:
            times.append(min(after))
            labels = ["wait returns, next call starts", "call -> PJRT Execute",
                      "PJRT Execute -> CUDA graph launch", "launch -> first kernel"]  # fmt: skip
            for label, a, b in zip(labels, times[:-1], times[1:], strict=True):
                sums[label] += (b - a) / 1e6
            n += 1
    return {label: total / n for label, total in sums.items()} if n else {}


def gap_summary(xplane_path: str) -> None:
    """Prints :func:`between_calls` for a saved GPU trace (where the device idles between
    calls that are each waited for)."""
    from jax._src.lib import _profile_data

    data = _profile_data.ProfileData.from_file(xplane_path)
    kernels, host = [], []
    for plane in data.planes:
        for line in plane.lines:
            for e in line.events:
                if plane.name.startswith("/device:"):
                    kernels.append((float(e.start_ns), float(e.start_ns + e.duration_ns)))
                elif line.name == "python3" or line.name.startswith("python"):
                    host.append((e.name, float(e.start_ns)))
    stages = between_calls(kernels, host)
    if not stages:
        return
    print("\n| between two waited-for calls | ms (mean) |\n|---|---|")
    for label, ms in stages.items():
        print(f"| {label} | {ms:.2f} |")
    print(f"| total device idle | {sum(stages.values()):.2f} |")


def compile_summary(xplane_path: str, top: int) -> None:
    """Prints, per compiler thread pool, the events of a traced compilation with the most self
    time (:func:`compile_bench.summarise_trace`: each event less its nested children)."""
    for pool, p in compile_bench.summarise_trace(xplane_path, top=top).items():
        print(
            f"\n| {pool}: {p['threads']} threads, busy {p['busy_s']:.2f} s "
            f"(busiest {p['max_busy_s']:.2f} s) | count | self s |\n|---|---|---|"
        )
        for name, seconds, count in p["self_s"]:
            print(f"| {name[:80]} | {count} | {seconds:.2f} |")


#: A pause between two kernels longer than this is counted as between calls, not inside one.
CALL_GAP_NS = 1e6


def summarize(
    events, index: dict, steps: int, top: int, tag: str, conv_flops: float | None = None
) -> None:
    """Prints the kernel-kind, layer and top-kernel tables of one trace.

    The top table counts each kernel's launches per call: XLA emits one kernel for identical
    fusions, so one name can stand for many instructions. ``conv_flops``
    (:func:`forward_convolution_flops`) adds the convolutions' achieved rate.
    """
    by_cat, by_layer, by_op, launches = (collections.Counter() for _ in range(4))
    total = 0.0
    for kernel, hlo_op, _, dur in events:
        kind, op_name = lookup(index, hlo_op, kernel)
        total += dur
        by_cat[kind_category(kind, kernel)] += dur
        by_layer[layer_of(op_name)] += dur
        key = (kernel[:50], kind, op_name[-90:])
        by_op[key] += dur
        launches[key] += 1
    if total == 0:
        print(f"# {tag}: no kernels in the trace")
        return
    starts = sorted((s, s + d) for _, _, s, d in events)
    span = max(end for _, end in starts) - starts[0][0]
    pauses = [b[0] - a[1] for a, b in zip(starts, starts[1:], strict=False)]
    inside = sum(p for p in pauses if 0 < p <= CALL_GAP_NS)
    print(
        f"\n# {tag}: {total / steps / 1e6:.2f} ms of kernels per call, "
        f"{span / steps / 1e6:.2f} ms from the first kernel's start to the last's end "
        f"(per call, {steps} calls; the difference is idle device time); "
        f"{len(events) / steps:.0f} kernels per call, {inside / steps / 1e6:.2f} ms per call of "
        f"pauses between consecutive kernels up to {CALL_GAP_NS / 1e6:g} ms (inside a call)"
    )
    conv_ns = by_cat["convolution (cuDNN)"]
    if conv_flops and conv_ns:
        print(
            f"# forward convolutions: {conv_flops / 1e12:.2f} TFLOP per call in "
            f"{conv_ns / steps / 1e6:.2f} ms, {conv_flops * steps / conv_ns / 1e3:.0f} TFLOP/s"
        )
    for title, counter in (("kernel kind", by_cat), ("layer", by_layer)):
        print(f"\n| {title} | ms per call | share |\n|---|---|---|")
        for key, dur in counter.most_common():
            print(f"| {key} | {dur / steps / 1e6:.3f} | {dur / total:.1%} |")
    print(
        "\n| kernel | kind | launches per call | ms per call | share | source |"
        "\n|---|---|---|---|---|---|"
    )
    for key, dur in by_op.most_common(top):
        op, kind, src = key
        n = launches[key] / steps
        print(f"| {op} | {kind} | {n:g} | {dur / steps / 1e6:.3f} | {dur / total:.1%} | {src} |")


def _read_maybe_gzipped(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def build(args, config):
    if args.what == "train":
        step, state, batch = suite.build_train(config, args.dtype, args.batch, 1)
        compiled = step.fn.lower(state, batch).compile()
        carry = {"state": state}

        def call():
            carry["state"], metrics = compiled(carry["state"], batch)
            return metrics

        return compiled, call
    jf, call_args = suite.build_forward(config, args.dtype, args.batch, params=args.forward_params)
    compiled, call_args = suite.compile_forward(jf, call_args)
    return compiled, lambda: compiled(*call_args)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ncsnpp_ve", choices=sorted(suite.CONFIGS))
    p.add_argument("--what", default="train", choices=("train", "forward"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--smoke", action="store_true")
    p.add_argument(
        "--from-files",
        nargs=2,
        metavar=("XPLANE", "HLO"),
        default=None,
        help="summarize a saved trace and HLO (e.g. fetched from a GPU run) instead of running",
    )
    p.add_argument("--init-scale", type=float, default=1.0)
    p.add_argument(
        "--forward-params",
        default="float32",
        choices=suite.FORWARD_PARAMS,
        help="--what forward: how the parameters are passed (suite.py --forward-params)",
    )
    p.add_argument(
        "--trace-compile",
        action="store_true",
        help="also trace the compilation and print where its time goes",
    )
    p.add_argument("--out", default=None, help="folder for the trace and the HLO (gzipped)")
    p.add_argument(
        "--fir",
        default="taps",
        choices=("taps", "depthwise"),
        help="FIR resampling: the shipped tap sum, or the depthwise convolution it replaced",
    )
    args = p.parse_args(argv)
    if args.fir == "depthwise":
        import fir_bench

        from scoresde.models import up_or_down_sampling

        up_or_down_sampling.upfirdn2d = fir_bench.upfirdn2d_depthwise
    if args.from_files:
        xplane, hlo = (_read_maybe_gzipped(path) for path in args.from_files)
        with tempfile.NamedTemporaryFile(suffix=".xplane.pb") as f:
            f.write(xplane)
            f.flush()
            events = device_events(f.name)
            text = hlo.decode()
            index = hlo_index(text)
            flops = forward_convolution_flops(text)
            summarize(events, index, args.steps, args.top, args.from_files[0], flops)
            host_summary(f.name, index, args.steps)
            gap_summary(f.name)
        return
    args.batch = args.batch or (2 if args.smoke else 128)
    config = load_config(
        suite.CONFIGS[args.model] + (":smoke" if args.smoke else ""),
        overrides=[f"model.init_scale={args.init_scale}"],
    )
    if args.trace_compile:
        compile_dir = tempfile.mkdtemp(prefix="scoresde_compile_trace_")
        with jax.profiler.trace(compile_dir):
            compiled, call = build(args, config)
        found = glob.glob(os.path.join(compile_dir, "**", "*.xplane.pb"), recursive=True)
        compile_summary(found[0], args.top)
    else:
        compiled, call = build(args, config)
    hlo_text = compiled.as_text()
    index = hlo_index(hlo_text)
    for _ in range(2):
        jax.block_until_ready(call())
    trace_dir = tempfile.mkdtemp(prefix="scoresde_trace_")
    with jax.profiler.trace(trace_dir):
        for _ in range(args.steps):
            jax.block_until_ready(call())
    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {trace_dir}")
    tag = f"{args.model}_{args.what}_{args.dtype}_b{args.batch}_{args.fir}"
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(paths[0], "rb") as src, gzip.open(f"{args.out}/{tag}.xplane.pb.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        with gzip.open(f"{args.out}/{tag}.hlo.txt.gz", "wt") as dst:
            dst.write(hlo_text)

    flops = forward_convolution_flops(hlo_text)
    summarize(device_events(paths[0]), index, args.steps, args.top, tag, flops)
    host_summary(paths[0], index, args.steps)
    gap_summary(paths[0])


if __name__ == "__main__":
    jnp.zeros(())  # initialize the backend before tracing
    main()
