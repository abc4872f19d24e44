"""The benchmark scripts' CPU smoke modes: they run, and what they print is consistent.

The GPU figures come from the same code (``docs/benchmarks.md``); here the configs' tiny
``smoke`` networks stand in, so a change that breaks a benchmark fails CI rather than a GPU
session.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde.models.group_norm as gn_module

BENCH_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCH_DIR))

import compile_bench  # noqa: E402
import fir_bench  # noqa: E402
import groupnorm_bench  # noqa: E402
import profile_step  # noqa: E402
import suite  # noqa: E402
import temb_shift_bench  # noqa: E402


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows if not set(r[0].strip()) <= set("-")]


def test_suite_smoke_forward_train_pc(capsys, tmp_path):
    out = tmp_path / "suite.jsonl"
    suite.main(
        [
            "--smoke",
            "--models",
            "ddpmpp_vp",
            "--dtypes",
            "float32",
            "--benches",
            "forward,train,pc",
            "--out",
            str(out),
        ]
    )
    printed = _records(capsys.readouterr().out)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert printed == written
    by_bench = {r["bench"]: r for r in written}
    assert set(by_bench) == {"forward", "train", "pc"}
    fwd, train, pc = by_bench["forward"], by_bench["train"], by_bench["pc"]
    # rate = batch / median time, by construction
    assert fwd["img_nfe_per_s"] == pytest.approx(fwd["batch"] / fwd["median_s"])
    assert train["img_per_s"] == pytest.approx(train["batch"] / train["median_s"])
    assert np.isfinite(train["loss"]) and train["compile_s"] > 0
    assert train["state_leaves"] > 0 and train["devices"] == 1
    # reverse diffusion + one Langevin step per grid step: 2 evaluations for each of the
    # num_steps - 1 steps, plus the final denoising step. (The samples of a random smoke
    # network over 5 steps are not meaningful and may overflow, so finiteness is not asserted.)
    assert pc["nfe"] == 2 * (pc["num_steps"] - 1) + 1


def test_suite_group_norm_ab_on_host_drawn_weights(capsys):
    """``--group-norm-impls xla,auto --init numpy``: one record per implementation over the
    same host-drawn weights; on a CPU "auto" is the XLA path, so the outputs agree exactly."""
    suite.main(
        ["--smoke", "--models", "ddpmpp_vp", "--dtypes", "float32", "--benches", "forward"]
        + ["--group-norm-impls", "xla,auto", "--init", "numpy"]
    )
    records = _records(capsys.readouterr().out)
    assert [r["group_norm_impl"] for r in records] == ["xla", "auto"]
    assert all(r["init"] == "numpy" and r["finite"] for r in records)
    assert records[1]["rel_diff_vs_first_impl"] == 0.0
    assert records[0]["hlo_custom_calls"] == records[1]["hlo_custom_calls"]


def test_suite_forward_params_variants_compute_the_same_scores(capsys):
    """``--forward-params cast`` / ``cast_auto_layout`` pass the parameters converted beforehand
    (and in XLA's layouts): the same function of the same host-drawn weights, so the bfloat16
    outputs' norms agree exactly (on a CPU the layouts are row-major, and the conversions are
    the same roundings done earlier)."""
    norms = {}
    for params in suite.FORWARD_PARAMS:
        suite.main(
            ["--smoke", "--models", "ddpmpp_vp", "--dtypes", "bfloat16", "--benches", "forward"]
            + ["--init", "numpy", "--forward-params", params]
        )
        (rec,) = _records(capsys.readouterr().out)
        assert rec["forward_params"] == params and rec["finite"]
        norms[params] = rec["output_l2"]
    assert len(set(norms.values())) == 1, norms
    with pytest.raises(ValueError, match="params must be one of"):
        suite.build_forward(suite.load_config(suite.CONFIGS["ddpmpp_vp"] + ":smoke"), "float32", 2,
                            params="bf16")  # fmt: skip


@pytest.mark.slow  # 30 s here; cast_to_compute_dtype's exactness has fast tests of its own
def test_suite_pc_in_bfloat16_with_cast_parameters_draws_the_same_samples(capsys):
    """``--pc-dtype bfloat16 --forward-params cast``: the sampler's network computes in
    bfloat16 from parameters converted beforehand, the same function, so the same samples for
    the same key (equal norms). NCSN++: its smoke samples stay finite over the smoke run's
    steps (DDPM++'s random smoke network overflows)."""
    norms = {}
    for params in ("float32", "cast"):
        suite.main(
            ["--smoke", "--models", "ncsnpp_ve", "--benches", "pc", "--pc-dtype", "bfloat16"]
            + ["--init", "numpy", "--forward-params", params]
        )
        (rec,) = _records(capsys.readouterr().out)
        assert (rec["dtype"], rec["forward_params"]) == ("bfloat16", params)
        norms[params] = rec["sample_l2"]
    assert norms["cast"] == norms["float32"] and np.isfinite(norms["cast"])


def test_numpy_init_draws_the_documented_distributions():
    shapes = {
        "Conv_0": {"kernel": jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32)},
        "GroupNorm_0": {"scale": jax.ShapeDtypeStruct((64,), jnp.float32),
                        "bias": jax.ShapeDtypeStruct((64,), jnp.float32)},
        "W": jax.ShapeDtypeStruct((20000,), jnp.float32),
    }  # fmt: skip
    v = suite.numpy_init(shapes, fourier_scale=16.0)
    # fan-average uniform: variance limit^2 / 3 = 1 / fan_avg, fan_avg = 9 * (64 + 128) / 2;
    # 73,728 draws give the variance to ~0.5%, so 3% is far outside sampling noise.
    assert float(jnp.var(v["Conv_0"]["kernel"])) == pytest.approx(1 / (9 * 96), rel=0.03)
    assert bool(jnp.all(v["GroupNorm_0"]["scale"] == 1) & jnp.all(v["GroupNorm_0"]["bias"] == 0))
    assert float(jnp.std(v["W"])) == pytest.approx(16.0, rel=0.03)


def test_suite_auto_state_layout_trains_the_same(capsys):
    """``--state-layout auto`` stores the state in XLA-chosen layouts: the same program, so the
    same losses (on a CPU both layouts are row-major and the runs agree exactly)."""
    common = ["--smoke", "--models", "ddpmpp_vp", "--dtypes", "float32", "--benches", "train"]
    losses = {}
    for layout in ("default", "auto"):
        suite.main([*common, "--state-layout", layout])
        (rec,) = _records(capsys.readouterr().out)
        assert rec["state_layout"] == layout
        losses[layout] = (rec["first_loss"], rec["loss"])
    np.testing.assert_allclose(losses["auto"], losses["default"], rtol=1e-6)


def test_compile_bench_counts_and_the_update_grows_per_leaf():
    """The instruction counters on a program of known size, and the claim the compile
    breakdown rests on: the update adds instructions per parameter leaf. Lowered, ``sgd_step``
    exceeds ``grad`` by the gradient all-reduce, SGD and the EMA call of every leaf (the bound
    is 5 per leaf), while Adam is lowered once per leaf shape and called per leaf, so ``step``
    exceeds ``sgd_step`` by under 10 operations per leaf (a per-leaf copy of Adam's arithmetic
    would be ~29). XLA inlines the calls: optimized, ``step`` exceeds ``sgd_step`` by 65
    instructions per leaf for this network (XLA:CPU), bounded below at 30, so an update whose
    compiled size does not grow with the number of leaves fails. The warm-up differs from
    ``grad`` by its one multiply."""
    lowered = jax.jit(lambda x: -(x * 2.0)).lower(jnp.ones(3))
    # constant, broadcast, multiply, negate
    assert compile_bench.count_stablehlo_operations(lowered.as_text()) == 4
    # the same four and the parameter
    assert compile_bench.count_hlo_instructions(lowered.as_text(dialect="hlo")) == 5

    config = suite.load_config(
        suite.CONFIGS["ddpmpp_vp"] + ":smoke", ["model.nf=8", "model.ch_mult=(1,)"]
    )
    programs = compile_bench.build_programs(config, "float32", 2, "auto")
    leaves = len(jax.tree.leaves(programs["grad"][1][0]))
    ops = {
        name: compile_bench.count_stablehlo_operations(fn.lower(*args).as_text())
        for name, (fn, args) in programs.items()
    }
    assert 1 <= ops["warmup"] - ops["grad"] <= 4
    assert ops["sgd_step"] - ops["grad"] >= 5 * leaves
    assert ops["step"] - ops["sgd_step"] < 10 * leaves
    step_text = programs["step"][0].lower(*programs["step"][1]).as_text()
    assert step_text.count("call @_adam_leaf") == leaves
    compiled = {
        name: compile_bench.count_hlo_instructions(fn.lower(*args).compile().as_text())
        for name, (fn, args) in programs.items()
        if name in ("sgd_step", "step")
    }
    assert compiled["step"] - compiled["sgd_step"] >= 30 * leaves


def test_compile_bench_signature_tells_programs_apart(tmp_path):
    """The optimized-program signature: a program compared with its own is the same, one with
    an extra operation is not; it counts every instruction once; the lowered-program counters
    of a known convolution program."""
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    g = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 2.0)
    x = jnp.ones((8, 8))
    sig = str(tmp_path / "sig.json")
    compile_bench.compile_row("f", f, (x,), signature_out=sig)
    assert compile_bench.compile_row("f", f, (x,), compare_signature=sig)["same_optimized_program"]
    assert not compile_bench.compile_row("g", g, (x,), compare_signature=sig)[
        "same_optimized_program"
    ]
    hlo = f.lower(x).compile().as_text()
    assert sum(compile_bench.optimized_signature(hlo).values()) == (
        compile_bench.count_hlo_instructions(hlo)
    )

    def conv(x, w):
        return jax.lax.conv(x, w, (1, 1), "SAME")

    two = jax.jit(lambda x, w: conv(conv(x, w), w) + conv(x, w[:, :, :1]))
    text = two.lower(jnp.ones((1, 2, 4, 4)), jnp.ones((2, 2, 3, 3))).as_text()
    assert text.count("stablehlo.convolution") == 3
    assert compile_bench.distinct_convolutions(text) == 2


def test_compile_bench_trace_summary_adds_up(tmp_path):
    """The trace summary of a real compile: per pool, the self times of all events add up to
    the threads' busy time (each event's duration is counted once, as its own time or as its
    parent's child), the busiest thread is at most the pool's total, and XLA's compile shows
    up. Summed unrounded (``ndigits=9``), so the tolerance is float rounding of nanosecond
    sums. The ``compile_row`` of a traced compile carries the summary."""
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    x = jnp.ones((32, 32))
    row = compile_bench.compile_row("tanh", f, (x,), str(tmp_path))
    assert row["compile_s"] > 0 and row["profile"]
    # a second traced compile into the same directory reads its own trace, not the first's
    assert compile_bench.compile_row("tanh", f, (x + 1,), str(tmp_path))["profile"]
    jax.profiler.start_trace(str(tmp_path / "again"))
    f.lower(x * 2).compile()
    jax.profiler.stop_trace()
    (path,) = list((tmp_path / "again").rglob("*.xplane.pb"))
    pools = compile_bench.summarise_trace(str(path), top=10**6, ndigits=9)
    names = {n for p in pools.values() for n, _, _ in p["self_s"]}
    assert any("Compile" in n for n in names), sorted(names)[:20]
    for pool in pools.values():
        total_self = sum(s for _, s, _ in pool["self_s"])
        assert total_self == pytest.approx(pool["busy_s"], rel=1e-9, abs=1e-6)
        assert pool["max_busy_s"] <= pool["busy_s"] + 1e-9


def test_compile_bench_lower_for_cuda_on_a_cpu(capsys, monkeypatch):
    """``--lower-for`` traces and lowers without compiling, for any platform from this CPU:
    for CUDA the smoke NCSN++ step holds the GroupNorm kernels (Pallas custom calls: ``auto``
    traces as on a CUDA GPU), for the CPU none. The monkeypatch restores the GroupNorm
    platform check that ``--lower-for cuda`` replaces for the process."""
    monkeypatch.setattr(gn_module, "default_backend_is_cuda", gn_module.default_backend_is_cuda)
    for platform in ("cpu", "cuda"):
        compile_bench.main(["--smoke", "--programs", "step", "--lower-for", platform])
    cpu, cuda = _records(capsys.readouterr().out)
    assert cpu["lowering_platform"] == "cpu" and cpu["custom_calls"] == 0
    assert cuda["lowering_platform"] == "cuda" and cuda["custom_calls"] > 0
    assert cuda["trace_s"] > 0 and cuda["lower_s"] > 0 and "compile_s" not in cuda


def test_fir_bench_smoke_implementations_agree(capsys):
    fir_bench.main(["--smoke"])
    rows = _table_rows(capsys.readouterr().out)[1:]  # skip the header
    assert {r[2] for r in rows} == {
        "taps",
        "taps_pad",
        "taps_select",
        "taps_materialized",
        "zero_insert_taps",
        "depthwise",
    }
    # all compute the same filter in float32: differences are summation-order rounding
    assert max(float(r[-1]) for r in rows) < 1e-5


def test_groupnorm_bench_smoke_variants_agree(capsys):
    groupnorm_bench.main(["--smoke", "--dtypes", "float32"])
    rows = _table_rows(capsys.readouterr().out)[1:]
    assert {r[2] for r in rows} == set(groupnorm_bench.VARIANTS)
    # float32 GroupNorm of O(1) data: one-pass statistics agree with flax to ~1e-6
    assert max(float(r[-1]) for r in rows) < 1e-4


@pytest.mark.slow
def test_profile_step_smoke_attributes_the_time(capsys, tmp_path):
    profile_step.main(["--smoke", "--steps", "2", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "ms of kernels per call" in text
    shares = [
        float(r[2].rstrip("%"))
        for r in _table_rows(text)
        if len(r) == 3 and r[2].endswith("%") and r[0] != "layer"
    ]
    # the kernel-kind table and the layer table each account for all the time
    assert sum(shares) == pytest.approx(200.0, abs=1.0)
    assert len(list(tmp_path.glob("*.xplane.pb.gz"))) == 1


def test_between_calls_splits_the_device_idle_time_by_dispatch_stage():
    """Two calls: kernels end at 10 ms; the next call starts at 10.2, reaches PJRT at 11.0,
    launches its graph at 11.5, and its first kernel starts at 11.6 (times in ns). A host
    event before the gap (the first call's own) is not counted."""
    ms = 1e6
    kernels = [(0.5 * ms, 10.0 * ms), (11.6 * ms, 20.0 * ms)]
    host = [("PjitFunction(jit(f))", 0.0), ("PJRT_LoadedExecutable_Execute", 0.2 * ms),
            ("cuGraphLaunch (CudaGraph:1)", 0.4 * ms),
            ("PjitFunction(jit(f))", 10.2 * ms), ("PjitFunction(jit(f))", 10.21 * ms),
            ("PJRT_LoadedExecutable_Execute", 11.0 * ms),
            ("cuGraphLaunch (CudaGraph:1)", 11.5 * ms)]  # fmt: skip
    stages = profile_step.between_calls(kernels, host)
    assert list(stages.values()) == pytest.approx([0.2, 0.8, 0.5, 0.1])


def test_hlo_index_reads_kinds_and_sources():
    hlo = (
        '  %fusion.3 = f32[2]{0} fusion(%p), kind=kLoop, calls=%c, metadata={op_name="a/b/GroupNorm_0/add"}\n'
        '  %cudnn-conv.1 = (f32[2]{0}, u8[0]{0}) custom-call(%x, %w), custom_call_target="__cudnn$convForward"\n'
    )
    index = profile_step.hlo_index(hlo)
    assert index["fusion.3"] == ("fusion:kLoop", "a/b/GroupNorm_0/add")
    assert index["fusion_3"] == index["fusion.3"]  # the kernel-name spelling
    assert index["cudnn_conv_1"][0] == "__cudnn$convForward"
    assert profile_step.layer_of("a/b/GroupNorm_0/add") == "GroupNorm"
    assert profile_step.kind_category("__cudnn$convForward", "sm90_xmma") == "convolution (cuDNN)"


def test_profile_counts_launches_pauses_and_convolution_flops(capsys):
    """One kernel name launched for several identical fusions is reported with its launch
    count; pauses up to CALL_GAP_NS count as idle inside a call; cuDNN convolution kernels
    inside CUDA graphs (no HLO kind) are known by name; the forward convolutions' FLOPs come
    from the HLO's shapes (2 * outputs * I * kh * kw), and a program with a backward
    convolution gets none."""
    conv = (
        "%w = bf16[128,3,3,64]{3,2,1,0} parameter(1)\n"
        "%c = (bf16[512,32,32,128]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3}, "
        'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBiasActivationForward"\n'
    )
    flops = 2 * (512 * 32 * 32 * 128) * 64 * 3 * 3
    assert profile_step.forward_convolution_flops(conv) == flops
    backward = conv + conv.replace("%c =", "%d =").replace(
        "convBiasActivationForward", "convBackwardInput"
    )
    assert profile_step.forward_convolution_flops(backward) is None
    ms = 1e6  # ns
    events = [  # two calls: fusion.1 twice per call, one convolution, 0.1 ms pauses
        ("loop_fusion_1", "command_buffer_1", 0.0, 1 * ms),
        ("sm90_xmma_fprop_implicit_gemm", "command_buffer_1", 1.1 * ms, 2 * ms),
        ("loop_fusion_1", "command_buffer_1", 3.2 * ms, 1 * ms),
        ("loop_fusion_1", "command_buffer_1", 10 * ms, 1 * ms),
        ("sm90_xmma_fprop_implicit_gemm", "command_buffer_1", 11.1 * ms, 2 * ms),
        ("loop_fusion_1", "command_buffer_1", 13.2 * ms, 1 * ms),
    ]
    index = profile_step.hlo_index("  %loop_fusion.1 = f32[2]{0} fusion(%p), kind=kLoop\n")
    profile_step.summarize(events, index, 2, 5, "t", conv_flops=flops)
    text = capsys.readouterr().out
    assert "3 kernels per call, 0.20 ms per call of pauses" in text
    assert "39 TFLOP/s" in text  # 0.077 TFLOP per call in 2 ms
    rows = {r[0]: r for r in _table_rows(text)}
    assert rows["loop_fusion_1"][2] == "2" and rows["loop_fusion_1"][3] == "2.000"
    assert rows["convolution (cuDNN)"][1] == "2.000"


def test_temb_shift_folded_into_groupnorm_is_the_same_function(capsys, np_rng):
    """GroupNorm(h + t) from per-channel sums of h (the shift never materialized) equals the
    GroupNorm of the shifted tensor, values and gradients, in float32."""
    temb_shift_bench.main(["--smoke", "--dtypes", "float32"])
    rows = _table_rows(capsys.readouterr().out)[1:]
    assert {r[2] for r in rows} == set(temb_shift_bench.VARIANTS)
    b, size, ch, groups = 2, 6, 8, 2
    args = [
        np_rng.normal(size=(b, size, size, ch)),
        np_rng.normal(size=(3, 3, ch, ch)) / 8,
        0.1 * np_rng.normal(size=(ch,)),
        np_rng.normal(size=(b, ch)),  # t: a shift per example and channel
        1.0 + 0.1 * np_rng.normal(size=(ch,)),
        0.1 * np_rng.normal(size=(ch,)),
    ]
    args = [jnp.asarray(a, jnp.float32) for a in args]
    weights = jnp.asarray(np_rng.normal(size=(b, size, size, ch)), jnp.float32)

    def loss(f):
        return lambda *a: jnp.sum(f(*a, groups) * weights)

    ref = temb_shift_bench.as_written(*args, groups)
    # one-pass statistics of O(1) data in float32: ~1e-6 apart
    np.testing.assert_allclose(temb_shift_bench.folded(*args, groups), ref, atol=1e-5)
    grads_ref = jax.grad(loss(temb_shift_bench.as_written), argnums=range(6))(*args)
    grads = jax.grad(loss(temb_shift_bench.folded), argnums=range(6))(*args)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_optimizer_bench_smoke_variants_agree():
    import optimizer_bench

    rows = optimizer_bench.main(["--smoke", "--models", "ddpmpp_vp"])
    assert [r["variant"] for r in rows] == ["tree", "optax_chain", "packed", "flat"]
    tree, chain, packed, flat = rows
    # the library's per-leaf functions repeat optax's chain operation for operation, and
    # packing only regroups the same elementwise arithmetic: both bit-identical to the tree
    assert chain["max_abs_diff_vs_tree"] == 0.0 and packed["max_abs_diff_vs_tree"] == 0.0
    # XLA inlines the per-leaf calls: the same optimized program as the inline chain, from
    # a lowered program that holds each distinct leaf shape's arithmetic once
    assert tree["hlo_instructions"] == chain["hlo_instructions"]
    assert tree["stablehlo_ops"] < chain["stablehlo_ops"] / 2
    # one vector instead of every leaf: a far smaller program
    assert flat["hlo_instructions"] < tree["hlo_instructions"] / 10
    assert all(r["ms_per_update"] > 0 and r["params"] == tree["params"] for r in rows)
    assert all(r["compile_s"] > 0 and r["lower_s"] > 0 for r in rows)


def test_init_bench_smoke_rows(tmp_path):
    import init_bench

    out = tmp_path / "init.jsonl"
    rows = init_bench.main(["--smoke", "--models", "ddpmpp_vp", "--out", str(out)])
    assert [r["method"] for r in rows] == ["abstract", "host", "device"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    abstract, host, device = rows
    # on a CPU the host and the default device are one platform: the same program, the
    # same bits (a difference would mean init_variables draws other weights than model.init)
    assert host["bitwise_equal"] == host["leaves"] > 100 and host["max_rel_diff"] == 0.0
    # tracing alone compiles nothing; the other two compile a program each
    assert "compile_s" not in abstract and abstract["params"] > 0
    for r in (host, device):
        assert 0 < r["compile_s"] <= r["wall_s"]
        assert abs(r["wall_s"] - r["trace_s"] - r["lower_s"] - r["compile_s"] - r["other_s"]) < 2e-3


def test_suite_one_process_per_device(tmp_path, monkeypatch):
    """``--processes 2``: two processes joined on localhost, one device each, one report."""
    out = tmp_path / "mp.jsonl"
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    argv = ["--smoke", "--models", "ddpmpp_vp", "--dtypes", "float32", "--benches", "train"]
    suite.main([*argv, "--processes", "2", "--repeats", "1", "--out", str(out)])
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]  # process 0 only
    assert (rec["processes"], rec["devices"], rec["batch"]) == (2, 2, 4)
    assert np.isfinite(rec["first_loss"]) and np.isfinite(rec["loss"])
    assert rec["img_per_s"] == pytest.approx(rec["batch"] * rec["n_jitted_steps"] / rec["median_s"])
    with pytest.raises(SystemExit):  # only the train bench runs across processes
        suite.main([*argv[:5], "train,pc", "--processes", "2"])
    with pytest.raises(RuntimeError, match="exited with"):  # a failing child is reported
        suite.main(
            ["--smoke", "--models", "no_such_model", "--benches", "train", "--processes", "2"]
        )
