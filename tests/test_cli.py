"""The ``scoresde`` command line end to end on the digits smoke config, and its argument handling.

The end-to-end test trains a tiny DDPM++ for two steps, resumes it to four (the step count
continues and the data position is restored), samples (PNG + npz, finite, in range),
computes test bits/dim (finite, every one of the 297 test digits counted), and evaluates
the snapshots (results per checkpoint, skipped when run again). Everything it writes must
stay inside the workdir. The network is shrunk further than the smoke variant (one
resolution level, no attention) so that compiling it stays cheap.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from scoresde import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS_SMOKE = f"{REPO}/experiments/configs/digits.py:smoke"
#: The number of scikit-learn test digits (1,797 - 1,500 training digits).
NUM_TEST_DIGITS = 297
#: Overrides that make the smoke network cheaper to compile: one level, no attention.
TINY = [
    "--config.model.nf=8",
    "--config.model.ch_mult=(1,)",
    "--config.model.attn_resolutions=()",
    "--config.eval.batch_size=100",
    "--config.eval.num_samples=4",
    "--config.eval.end_ckpt=2",
    "--config.training.eval_freq=2",
    "--noprogress",
]


#: JAX's process-wide settings of the persistent compilation cache, which ``cli.main`` sets.
_CACHE_SETTINGS = (
    "jax_enable_compilation_cache",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture(autouse=True)
def restore_cache_settings(monkeypatch):
    """Every test starts without a persistent compilation cache (as a new user's shell, without
    ``JAX_COMPILATION_CACHE_DIR``) and leaves JAX's settings as it found them: ``cli.main``
    points the cache at the workdir, which must not outlive the test. ``cli.main`` also adds to
    ``XLA_FLAGS``, which ``monkeypatch`` gives back as it was."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))

    old = {name: getattr(jax.config, name) for name in _CACHE_SETTINGS}
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", True)
    cc.reset_cache()
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture
def cache_everything():
    """Cache every compiled program, however small or quick to compile (the tiny test
    network's would fall under JAX's 1 s threshold), so that each command of the end-to-end
    run (resumed training, sampling, evaluation) reuses what an earlier one compiled."""
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class _CacheHits:
    """Counts JAX's persistent-cache hits while registered."""

    def __init__(self):
        self.count = 0

    def __call__(self, event: str, **kwargs) -> None:
        self.count += event == "/jax/compilation_cache/cache_hits"

    def __enter__(self):
        jax.monitoring.register_event_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_listener(self)


def _run(command: str, workdir: pathlib.Path, *extra: str) -> int:
    return cli.main([command, f"--config={DIGITS_SMOKE}", f"--workdir={workdir}", *TINY, *extra])


def _saved_steps(workdir: pathlib.Path) -> list[int]:
    found = set()
    for kind in ("snapshots", "preemption"):
        d = workdir / "checkpoints" / kind
        if d.is_dir():
            found |= {int(p.name) for p in d.iterdir() if p.name.isdigit()}
    return sorted(found)


def _refuse_init(*args, **kwargs):
    raise AssertionError("a command that restores a checkpoint computed the initial weights")


def test_end_to_end(tmp_path, cache_everything, monkeypatch):
    workdir = tmp_path / "run"
    before = set(tmp_path.iterdir())

    # train two steps: a snapshot at step 2, a sample grid, log file, TensorBoard events;
    # the compiled programs in the workdir's persistent compilation cache (the default)
    assert _run("train", workdir, "--config.training.n_iters=2", "--nofinal_bpd") == 0
    assert jax.config.jax_compilation_cache_dir == os.path.abspath(workdir / "compilation_cache")
    assert any((workdir / "compilation_cache").iterdir())
    assert _saved_steps(workdir) == [2]
    assert (workdir / "samples" / "step_2.png").is_file()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    log = (workdir / "log.txt").read_text()
    assert "step 2: loss" in log and "train done: step 2/2" in log

    # resume to four steps: the run continues at step 3, never re-runs steps 1-2, and
    # loads the train step compiled by the first run instead of compiling it again
    with _CacheHits() as hits:
        assert _run("train", workdir, "--config.training.n_iters=4", "--nofinal_bpd") == 0
    assert hits.count >= 1
    assert _saved_steps(workdir) == [2, 4]
    log = (workdir / "log.txt").read_text()
    assert "resuming from step 2" in log
    assert log.count("step 1: loss") == 1 and log.count("step 3: loss") == 1
    assert "train done: step 4/4, 2 steps" in log

    # From here on every command restores a checkpoint, whose target is the train state's
    # traced shapes (Setup.abstract_state): none may compute the initial weights.
    from scoresde import experiment

    monkeypatch.setattr(experiment, "init_variables", _refuse_init)

    # sample: npz of uint8 images and their float values in [0, 1], plus the PNG grid
    assert _run("sample", workdir, "--num_samples=3", "--batch_size=2") == 0
    out = workdir / "samples" / "step_4"
    with np.load(out / "samples.npz") as f:
        images, values = f["samples"], f["samples_float"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0
    from PIL import Image

    with Image.open(out / "samples.png") as png:
        assert png.size[0] > 8 and png.size[1] > 8

    # likelihood: finite bits/dim over every test digit, twice (two repeats)
    # (loose ODE tolerances keep the 2 x 297 solves cheap; the count and finiteness are exact)
    assert _run("likelihood", workdir, "--num_repeats=2", "--rtol=1e-3", "--atol=1e-3") == 0
    result = json.loads((workdir / "likelihood" / "test_step_4.json").read_text())
    assert result["num_examples"] == NUM_TEST_DIGITS and result["num_repeats"] == 2
    assert np.isfinite(result["bpd"]) and np.isfinite(result["bpd_stderr"])
    # an untrained model's bits/dim lies well above 0 and below a broad Gaussian's ~ 20
    assert 0.0 < result["bpd"] < 30.0
    values = np.load(workdir / "likelihood" / "test_step_4_state" / "bpd_values.npz")["bpd"]
    assert values.shape == (2, NUM_TEST_DIGITS) and np.isfinite(values).all()

    # eval: checkpoints 1..2 (steps 2 and 4) with loss, bits/dim and samples
    assert _run("eval", workdir, "--config.eval.enable_bpd=False") == 0
    for k, step in ((1, 2), (2, 4)):
        res = json.loads((workdir / "eval" / f"ckpt_{k}.json").read_text())
        assert res["complete"] and res["step"] == step
        assert np.isfinite(res["eval_loss"]) and res["eval_loss_examples"] == NUM_TEST_DIGITS
        with np.load(workdir / "eval" / f"ckpt_{k}" / "samples_0.npz") as f:
            assert f["samples"].shape == (4, 8, 8, 1)
    # run again: every checkpoint is already evaluated and skipped
    assert _run("eval", workdir, "--config.eval.enable_bpd=False") == 0
    assert (workdir / "log.txt").read_text().count("already evaluated") == 2

    # nothing was written outside the workdir
    assert set(tmp_path.iterdir()) - before == {workdir}


def test_configure_compilation_cache(tmp_path, monkeypatch):
    """Precedence: an explicit directory, else JAX's own setting, else the workdir's; 'none'
    turns the cache off and keeps it off; the empty string is refused."""
    configure = cli.configure_compilation_cache
    workdir = tmp_path / "run"
    assert configure(None, workdir) == str(workdir / "compilation_cache")
    assert jax.config.jax_compilation_cache_dir == str(workdir / "compilation_cache")
    # a later command of the same process on another workdir moves the default along
    assert configure(None, tmp_path / "other") == str(tmp_path / "other" / "compilation_cache")
    # the user's own setting (jax.config, or JAX_COMPILATION_CACHE_DIR) wins over the default
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert configure(None, workdir) == str(tmp_path / "mine")
    # an explicit directory wins over JAX's setting; "~" is expanded, relative paths anchored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert configure("~/jax", workdir) == str(tmp_path / "home" / "jax")
    monkeypatch.chdir(tmp_path)
    assert configure("rel", workdir) == str(tmp_path / "rel")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "rel")
    assert configure("none", workdir) is None
    assert not jax.config.jax_enable_compilation_cache
    assert configure(None, workdir) is None  # off stays off
    assert configure("/x/y", workdir) == "/x/y" and jax.config.jax_enable_compilation_cache
    with pytest.raises(cli.UsageError, match="--compilation_cache must be a directory or 'none'"):
        configure("", workdir)


def test_compilation_cache_none_compiles_without_writing(tmp_path, cache_everything):
    """With the cache on, a compiled program lands in the directory; after 'none' it does not."""
    cache = tmp_path / "cache"
    cli.configure_compilation_cache(str(cache), tmp_path)
    jax.jit(lambda x: x * 3.0 + 1.0)(np.ones(3, np.float32)).block_until_ready()
    n = len(list(cache.iterdir()))
    assert n >= 1
    cli.configure_compilation_cache("none", tmp_path)
    jax.jit(lambda x: x * 5.0 - 2.0)(np.ones(3, np.float32)).block_until_ready()
    assert len(list(cache.iterdir())) == n


def test_parse_command_line():
    command, fv, overrides = cli.parse_command_line(
        [
            "train",
            "--config",
            "c.py",
            "--workdir=w",
            "--config.training.n_iters",
            "7",
            "--nofinal_bpd",
        ]
    )
    assert (command, fv.config, fv.workdir, fv.final_bpd) == ("train", "c.py", "w", False)
    assert overrides == ["training.n_iters=7"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--config=x.py", "--workdir=w"], "must be a command"),
        (["train", "--config=x.py"], "workdir"),
        (["train", "--config=x.py", "--workdir=w", "--bogus=1"], "bogus"),
        (["train", "--config=x.py", "--workdir=w", "stray"], "unexpected arguments"),
        (["sample", "--config=x.py", "--workdir=w", "--config.seed"], "needs a value"),
    ],
)
def test_bad_command_lines(argv, message):
    with pytest.raises(cli.UsageError, match=message):
        cli.parse_command_line(argv)


def test_main_reports_bad_input(tmp_path, capsys):
    assert cli.main(["fit"]) == 2
    assert "must be a command" in capsys.readouterr().err
    bad_field = ["train", f"--config={DIGITS_SMOKE}", f"--workdir={tmp_path}", "--config.x.y=1"]
    assert cli.main(bad_field) == 2
    assert "no section 'x'" in capsys.readouterr().err
    missing = ["sample", f"--config={DIGITS_SMOKE}", f"--workdir={tmp_path / 'none'}"]
    assert cli.main(missing) == 2
    assert "train first" in capsys.readouterr().err


def test_step_compiler_options_flag(tmp_path, capsys):
    """``--step_compiler_options`` reaches the train step's compile: an option XLA does not
    know fails it, naming the option (so the flag is not dropped on the way); a value that is
    not a JSON object is a usage error naming the flag, before anything is built."""
    for bad in ("[1]", "{xla"):
        assert _run("train", tmp_path / "bad", f"--step_compiler_options={bad}") == 2
        assert "--step_compiler_options must be a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    unknown = '--step_compiler_options={"xla_no_such_option": 1}'
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_no_such_option"):
        _run("train", tmp_path / "run", "--config.training.n_iters=1", unknown)


def test_load_cli_config_adds_num_repeats():
    config = cli.load_cli_config(DIGITS_SMOKE, ["training.n_iters=3"])
    assert config.eval.num_repeats >= 1 and config.training.n_iters == 3


def test_entry_point_installed():
    """The ``scoresde`` console script (pyproject ``[project.scripts]``) runs ``cli.main``."""
    exe = pathlib.Path(sys.executable).with_name("scoresde")
    if not exe.is_file():
        pytest.skip("the scoresde entry point is not installed (pip install -e .)")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "scoresde COMMAND" in proc.stdout
    proc = subprocess.run(
        [str(exe), "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--workdir" in proc.stdout and "final_bpd" in proc.stdout


def test_configure_xla_flags_adds_defaults_and_keeps_the_users():
    env = {}
    assert cli.configure_xla_flags(env) == " ".join(cli.XLA_FLAG_DEFAULTS)
    assert cli.configure_xla_flags(env) == " ".join(cli.XLA_FLAG_DEFAULTS)  # added once
    # Another option of the user's stays, first; the user's own value of a default's option wins.
    env = {"XLA_FLAGS": "--xla_gpu_autotune_level=2"}
    assert cli.configure_xla_flags(env).split() == ["--xla_gpu_autotune_level=2",
                                                    *cli.XLA_FLAG_DEFAULTS]  # fmt: skip
    env = {"XLA_FLAGS": "--xla_gpu_enable_command_buffer="}
    assert cli.configure_xla_flags(env) == "--xla_gpu_enable_command_buffer="


def test_main_sets_xla_flags_before_the_backend_starts(tmp_path):
    # XLA reads XLA_FLAGS once, when JAX starts a backend, and aborts the process on a flag it
    # does not know: a fresh process runs main up to the config (bad field: exit 2 after the
    # flags are set), then compiles, so the defaults must be set and accepted by this XLA.
    code = (
        "import os, jax, jax.numpy as jnp\n"
        "from scoresde import cli\n"
        f"rc = cli.main(['train', '--config={DIGITS_SMOKE}', '--workdir={tmp_path}',"
        " '--config.training.no_such_field=1'])\n"
        "assert rc == 2, rc\n"
        "assert not jax._src.xla_bridge.backends_are_initialized()\n"
        "print(os.environ['XLA_FLAGS'])\n"
        "print(float(jax.jit(lambda x: x + 1)(jnp.ones(()))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == [" ".join(cli.XLA_FLAG_DEFAULTS), "2.0"]
