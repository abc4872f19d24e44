r"""The ``scoresde`` command: train, sample, likelihood and eval from an experiment config.

    scoresde train      --config CONFIG_FILE --workdir DIR   # resumes if DIR holds a checkpoint
    scoresde sample     --config CONFIG_FILE --workdir DIR   # sample grid PNG + npz
    scoresde likelihood --config CONFIG_FILE --workdir DIR   # bits/dim over a split, with repeats
    scoresde eval       --config CONFIG_FILE --workdir DIR   # eval loss, bpd, samples per ckpt

``CONFIG_FILE`` is a ``get_config()`` file of ``experiments/configs`` (``path.py:smoke``
selects its tiny variant); ``--config.section.field=value`` overrides a field (the value
is a Python literal of the field's type). Flags are absl flags (``--flag=value``,
``--flag value``, ``--[no]flag``); ``scoresde COMMAND --help`` lists them.

Everything a command writes is inside ``--workdir``:

    checkpoints/           Orbax checkpoints (train; read by the other commands)
    log.txt                every command's log lines, appended
    tensorboard/           TensorBoard event files (loss, eval loss, sample grids, bits/dim)
    samples/               train: step_<N>.png at each snapshot; sample: step_<N>/samples.{npz,png}
    likelihood/            <split>_step_<N>.json (mean, standard error) + resumable state
    eval/                  ckpt_<k>.json per evaluated checkpoint + its bpd state and samples
    compilation_cache/     compiled programs (JAX's persistent cache; see --compilation_cache)

Compiled programs are kept on disk (:func:`configure_compilation_cache`): a resumed or
re-run command loads its train step, samplers and likelihood solver instead of compiling
them again (the full-size train step: ~80 s to compile on a GPU, ~13 s to load).

Multi-host runs (``--multihost``, or ``--coordinator_address``/``--num_processes``/
``--process_id``) call :func:`jax.distributed.initialize` first; every process runs the
same command and only process 0 writes logs, pictures and result files.

Reference: the ``main.py --mode train|eval`` of Song et al.'s score_sde (ICLR 2021).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import numpy as np

#: The sub-commands.
COMMANDS = ("train", "sample", "likelihood", "eval")
#: Fields the commands read that older config files may lack, with their defaults.
CLI_DEFAULTS = {"eval.num_repeats": 1}
#: Default number of samples of ``scoresde sample``.
DEFAULT_NUM_SAMPLES = 64
#: Names inside the workdir.
SAMPLES_DIR = "samples"
LIKELIHOOD_DIR = "likelihood"
EVAL_DIR = "eval"
COMPILATION_CACHE_DIR = "compilation_cache"
#: XLA flags the commands add to ``XLA_FLAGS`` (:func:`configure_xla_flags`): cuDNN
#: convolutions recorded into XLA's CUDA graphs with the kernels around them.
XLA_FLAG_DEFAULTS = ("--xla_gpu_enable_command_buffer=+CONVOLUTION",)

_USAGE = """usage: scoresde COMMAND --config CONFIG_FILE --workdir DIR [--config.section.field=v]

commands:
  train       train; resumes if DIR holds a checkpoint
  sample      sample grid PNG + npz from the newest (or --checkpoint) checkpoint
  likelihood  bits/dim over eval.bpd_dataset with eval.num_repeats repeats (resumable)
  eval        eval loss, bits/dim and samples for each checkpoint in
              [eval.begin_ckpt, eval.end_ckpt] (resumable)

scoresde COMMAND --help lists a command's flags.
"""


class UsageError(ValueError):
    """Bad command line: the message says what was wrong."""


# -----------------------------------------------------------------------------------------
# command line
# -----------------------------------------------------------------------------------------


def _define_flags(command: str):
    from absl import flags

    fv = flags.FlagValues()

    def string(name, default, help_):
        flags.DEFINE_string(name, default, help_, flag_values=fv)

    def integer(name, default, help_):
        flags.DEFINE_integer(name, default, help_, flag_values=fv)

    def boolean(name, default, help_):
        flags.DEFINE_boolean(name, default, help_, flag_values=fv)

    string("config", None, "Experiment config file, path.py or path.py:smoke.")
    string("workdir", None, "Run directory: checkpoints, logs, samples and results go here.")
    boolean("multihost", False, "Join a multi-host run (jax.distributed.initialize).")
    string("coordinator_address", None, "host:port of process 0 (multi-host; else auto-detect).")
    integer("num_processes", None, "Number of processes (multi-host).")
    integer("process_id", None, "This process's index (multi-host).")
    boolean("progress", True, "Show a progress bar on stderr.")
    string(
        "compilation_cache",
        None,
        "JAX's persistent compilation cache: a directory, or 'none' for no cache (default: "
        f"JAX_COMPILATION_CACHE_DIR if set, else WORKDIR/{COMPILATION_CACHE_DIR}).",
    )
    if command == "train":
        boolean(
            "final_bpd",
            None,
            "Compute bits/dim on eval.bpd_dataset after training (default: eval.enable_bpd).",
        )
        string(
            "step_compiler_options",
            None,
            "XLA options of the train step alone (make_train_step's compiler_options), a JSON "
            "object, e.g. '{\"xla_gpu_enable_triton_gemm\": false}' (default: none).",
        )
    if command in ("sample", "likelihood"):
        integer("checkpoint", None, "Step of the checkpoint to use (default: the newest).")
    if command == "sample":
        integer("num_samples", DEFAULT_NUM_SAMPLES, "Number of samples.")
        integer("batch_size", None, "Samples per sampler call (default: eval.batch_size).")
    if command == "likelihood":
        string("split", None, "Dataset split (default: eval.bpd_dataset).")
        integer("num_repeats", None, "Passes over the split (default: eval.num_repeats).")
    if command in ("train", "likelihood", "eval"):
        string("divergence", "rademacher", "Divergence estimator: rademacher, gaussian, exact.")
        flags.DEFINE_float(
            "rtol", 1e-5, "ODE relative tolerance of the likelihood.", flag_values=fv
        )
        flags.DEFINE_float(
            "atol", 1e-5, "ODE absolute tolerance of the likelihood.", flag_values=fv
        )
    if command == "eval":
        boolean(
            "all_checkpoints",
            False,
            "Evaluate every saved checkpoint instead of [eval.begin_ckpt, eval.end_ckpt].",
        )
    flags.mark_flag_as_required("config", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)
    return fv


def _split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` overrides from the other flags."""
    rest, overrides = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(args):
                    raise UsageError(f"config override {arg!r} needs a value (--config.x.y=v).")
                body = f"{body}={args[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse_command_line(argv: Sequence[str]) -> tuple[str, Any, list[str]]:
    """Parses ``COMMAND --flag ... --config.x.y=v ...`` (without the program name).

    Args:
      argv: the arguments after ``scoresde``.

    Returns:
      ``(command, flag_values, overrides)``.

    Raises:
      UsageError: unknown command, unknown or missing flag, stray arguments.

    Example:
      >>> cmd, fv, ov = parse_command_line(
      ...     ["sample", "--config=c.py", "--workdir", "w", "--config.seed=3"])
      >>> cmd, fv.workdir, fv.num_samples, ov
      ('sample', 'w', 64, ['seed=3'])
    """
    from absl import flags

    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        got = argv[0] if argv else "nothing"
        raise UsageError(f"the first argument must be a command, one of {COMMANDS}; got {got}.")
    command = argv[0]
    rest, overrides = _split_overrides(argv[1:])
    fv = _define_flags(command)
    try:
        leftover = fv([f"scoresde {command}", *rest])
    except flags.Error as e:
        raise UsageError(str(e)) from None
    if len(leftover) > 1:
        raise UsageError(f"unexpected arguments {leftover[1:]}; flags look like --name=value.")
    return command, fv, overrides


def load_cli_config(spec: str, overrides: Sequence[str] = ()):
    """Loads a config file, adds the fields of :data:`CLI_DEFAULTS` it lacks, applies overrides.

    Example:
      >>> import pathlib, scoresde
      >>> repo = pathlib.Path(scoresde.__file__).parents[1]
      >>> c = load_cli_config(f"{repo}/experiments/configs/digits.py:smoke", ["eval.num_repeats=2"])
      >>> c.eval.num_repeats
      2
    """
    from scoresde.config_loading import apply_overrides, load_config, validate_config

    config = load_config(spec, (), validate=False)
    with config.unlocked():
        for dotted, value in CLI_DEFAULTS.items():
            section, name = dotted.split(".")
            if section in config and name not in config[section]:
                config[section][name] = value
    apply_overrides(config, list(overrides))
    validate_config(config)
    return config


#: The workdir default this module last gave JAX, so that a later command in the same process
#: (another workdir) replaces it rather than taking it for the user's own setting.
_default_cache_dir: str | None = None


def configure_compilation_cache(setting: str | None, workdir: str | os.PathLike) -> str | None:
    """Points JAX's persistent compilation cache at a directory, or turns it off.

    JAX then writes every program that took at least
    ``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile into the
    directory, keyed by the program, the devices and the JAX/XLA versions, and a later process
    loads it instead of compiling. On GPUs JAX also keeps XLA's autotuning results there, one
    per fusion (``jax_persistent_cache_enable_xla_caches``), so that a new program whose
    convolutions were tuned before (the sampler after training, a changed config) skips their
    autotuning. An entry cut short by a kill is reported as a warning and compiled again; it
    never stops a run. In a multi-host run only process 0 writes entries (JAX's rule); the
    others read them where the directory is shared. This changes process-wide JAX settings, which is why
    only the command line calls it.

    Args:
      setting: ``None``: JAX's own setting if the user made one (``JAX_COMPILATION_CACHE_DIR``,
        or ``jax.config``; an explicitly disabled cache stays off), else
        ``WORKDIR/compilation_cache``; ``"none"``: no persistent cache; any other string:
        that directory.
      workdir: the run directory.

    Returns:
      The cache directory in use, or ``None`` when there is none.

    Raises:
      UsageError: ``setting`` is the empty string.

    Example:
      >>> import jax, tempfile
      >>> from jax.experimental.compilation_cache import compilation_cache as cc
      >>> saved = jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache
      >>> d = tempfile.mkdtemp()
      >>> configure_compilation_cache(f"{d}/jit", d) == f"{d}/jit"
      True
      >>> configure_compilation_cache("none", d) is None
      True
      >>> jax.config.update("jax_compilation_cache_dir", saved[0])
      >>> jax.config.update("jax_enable_compilation_cache", saved[1]); cc.reset_cache()
    """
    global _default_cache_dir
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if setting == "":
        raise UsageError("--compilation_cache must be a directory or 'none', got the empty string.")
    current = jax.config.jax_compilation_cache_dir
    if setting is None:
        if not jax.config.jax_enable_compilation_cache:
            return None
        if current and current != _default_cache_dir:
            return current  # the user's (or JAX_COMPILATION_CACHE_DIR's), not an earlier default
        setting = str(pathlib.Path(workdir) / COMPILATION_CACHE_DIR)
        _default_cache_dir = os.path.abspath(os.path.expanduser(setting))
    if setting.lower() == "none":
        jax.config.update("jax_enable_compilation_cache", False)
        cc.reset_cache()
        return None
    path = os.path.abspath(os.path.expanduser(setting))
    if path != current or not jax.config.jax_enable_compilation_cache:
        jax.config.update("jax_enable_compilation_cache", True)
        cc.set_cache_dir(path)
        cc.reset_cache()  # a cache opened earlier in this process stays open otherwise
    return path


def configure_xla_flags(environ: MutableMapping[str, str] = os.environ) -> str:
    """Adds :data:`XLA_FLAG_DEFAULTS` to ``XLA_FLAGS``, each unless ``XLA_FLAGS`` sets its option.

    XLA records runs of kernels into CUDA graphs (command buffers) and launches each run with one
    call, but by default not cuDNN's convolutions, so the host launches each of the ~350
    convolutions of a full-size NCSN++ train step one by one, and each one splits the graphs
    around it. With ``+CONVOLUTION`` they are recorded with the kernels around them: the host's
    dispatch of a 5-step NCSN++ call fell from 254 ms to 48 ms in float32 (H200, same
    throughput) and from 163 ms to 38 ms in bfloat16 (H100), where the host had been the
    limit: +2.1% img/s (``docs/benchmarks.md``, ninth round). The freed CPU time also goes to
    the input pipeline. XLA reads ``XLA_FLAGS`` once, when JAX starts its backends, so
    :func:`main` calls this first; this changes a process-wide setting, which is why only the
    command line calls it. A flag of the user's for the same option wins
    (``--xla_gpu_enable_command_buffer=`` turns all graphs off).

    Args:
      environ: the environment to update.

    Returns:
      The new ``XLA_FLAGS``.

    Example:
      >>> env = {"XLA_FLAGS": "--xla_gpu_autotune_level=2"}
      >>> configure_xla_flags(env)
      '--xla_gpu_autotune_level=2 --xla_gpu_enable_command_buffer=+CONVOLUTION'
      >>> configure_xla_flags({"XLA_FLAGS": "--xla_gpu_enable_command_buffer=FUSION"})
      '--xla_gpu_enable_command_buffer=FUSION'
    """
    flags_ = environ.get("XLA_FLAGS", "").split()
    options = {f.lstrip("-").split("=", 1)[0] for f in flags_}
    for flag in XLA_FLAG_DEFAULTS:
        if flag.lstrip("-").split("=", 1)[0] not in options:
            flags_.append(flag)
    environ["XLA_FLAGS"] = " ".join(flags_)
    return environ["XLA_FLAGS"]


# -----------------------------------------------------------------------------------------
# config -> objects for a run
# -----------------------------------------------------------------------------------------


def _host(tree):
    """A (replicated) PyTree's values as host NumPy arrays; works for multi-host arrays."""
    import jax

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(one, tree)


@dataclasses.dataclass
class Setup:
    """What every command builds from the config (see :mod:`scoresde.experiment`).

    The network's initial weights are computed only when a command asks for them
    (:attr:`init_variables`, a fresh run's state); restoring a checkpoint needs only the
    state's structure, shapes and dtypes (:attr:`abstract_state`), which tracing gives
    without compiling or running ``model.init``.

    Attributes:
      config: the experiment config.
      workdir: the run directory (absolute).
      sde: the forward SDE.
      model: the score network.
      data_shape: shape of one example.
      continuous: continuous-time labels.
      centered: data scaled to ``[-1, 1]``.
      optimizer: the optax optimizer.
      make_score: ``make_score(variables) -> score_fn`` (weights traced).
      sampler: ``sampler(key, sde, score_fn, shape) -> (x, nfe)``.
      seed: ``config.seed``.
    """

    config: Any
    workdir: pathlib.Path
    sde: Any
    model: Any
    data_shape: tuple[int, ...]
    continuous: bool
    centered: bool
    optimizer: Any
    make_score: Callable
    sampler: Callable
    seed: int

    @classmethod
    def build(cls, config, workdir: str | os.PathLike) -> Setup:
        from scoresde import experiment, models

        sde = experiment.sde_from_config(config)
        model = models.from_config(config)
        continuous = bool(experiment.field(config, "training.continuous", True))
        return cls(
            config=config,
            workdir=pathlib.Path(workdir).absolute(),
            sde=sde,
            model=model,
            data_shape=experiment.data_shape_from_config(config),
            continuous=continuous,
            centered=bool(experiment.field(config, "data.centered", False)),
            optimizer=experiment.optimizer_from_config(config),
            make_score=experiment.score_fn_factory(sde, model, continuous),
            sampler=experiment.SamplerSettings.from_config(config).sampler(),
            seed=int(experiment.field(config, "seed", 0)),
        )

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    def inference_variables(self, variables: dict) -> dict:
        """``variables`` prepared for the score function: a network that computes in a lower
        dtype than its float32 parameters (``model.dtype=bfloat16``) gets each weight it only
        converts converted once, here (:func:`scoresde.models.cast_to_compute_dtype`: the same
        scores, bit for bit, without a conversion in every network call of a sampler or a
        likelihood solve). A float32 network's ``variables`` come back as they are.

        Example:
          >>> import pathlib, jax, jax.numpy as jnp, scoresde
          >>> from scoresde.config_loading import load_config
          >>> from scoresde.experiment import abstract_variables
          >>> repo = pathlib.Path(scoresde.__file__).parents[1]
          >>> spec = f"{repo}/experiments/configs/vp/cifar10_ddpmpp_continuous.py:smoke"
          >>> setup = Setup.build(load_config(spec, ["model.dtype=bfloat16"]), "/tmp/run")
          >>> shapes = abstract_variables(setup.model, setup.data_shape)
          >>> variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
          >>> prepared = setup.inference_variables(variables)
          >>> prepared["params"]["all_modules_1"]["kernel"].dtype
          dtype(bfloat16)
        """
        import jax
        import jax.numpy as jnp

        from scoresde.models import cast_to_compute_dtype

        if jnp.dtype(getattr(self.model, "dtype", jnp.float32)) == jnp.float32:
            return variables
        x = jax.ShapeDtypeStruct((1, *self.data_shape), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.float32)
        return cast_to_compute_dtype(lambda v, x, t: self.make_score(v)(x, t), variables, x, t)

    def key(self, purpose: int):
        """The run's key for one purpose (0: init, 1: training, 2: sampling, 3: eval loss)."""
        import jax

        return jax.random.fold_in(jax.random.key(self.seed), purpose)

    @functools.cached_property
    def init_variables(self) -> dict:
        """The network's initial variables (``experiment.init_variables`` with key 0)."""
        from scoresde import experiment

        return experiment.init_variables(self.model, self.key(0), self.data_shape)

    def _state(self, variables: dict):
        from scoresde.train import TrainState

        model_state = {k: v for k, v in variables.items() if k != "params"}
        return TrainState.create(variables["params"], self.optimizer, self.key(1), model_state)

    def fresh_state(self):
        """The train state of a fresh run: initial weights, optimizer state, EMA."""
        return self._state(self.init_variables)

    @functools.cached_property
    def abstract_state(self):
        """:meth:`fresh_state`'s structure, shapes and dtypes, traced without computing it."""
        import jax

        from scoresde import experiment

        shapes = experiment.abstract_variables(self.model, self.data_shape)
        return jax.eval_shape(self._state, shapes)

    @functools.cached_property
    def eval_loss_fn(self) -> Callable:
        """``fn(variables, x, keys) -> mean loss`` of the config's objective, dropout off."""
        return _eval_loss_fn(self)

    def ema_variables(self, state) -> dict:
        """The variables to evaluate: EMA parameters and the model's other collections."""
        return {"params": _host(state.ema_params), **_host(dict(state.model_state))}


def _require_checkpoints(workdir: str | os.PathLike) -> pathlib.Path:
    """``workdir/checkpoints``, or a FileNotFoundError saying to train first."""
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no checkpoints in {directory}; train first: scoresde train --config ... "
            f"--workdir {directory.parent}"
        )
    return directory


def _restore(setup: Setup, step: int | None = None):
    """``(state, step)`` of the newest checkpoint, or of the one at ``step``."""
    from scoresde.checkpoints import CheckpointManager

    class _AtStep(CheckpointManager):
        # restore() tries self.steps() newest first; offering only the wanted step restores it.
        def steps(self):
            found = super().steps()
            return found if step is None else [e for e in found if e[0] == step]

    directory = _require_checkpoints(setup.workdir)
    with _AtStep(setup.workdir, async_save=False) as manager:
        available = sorted({s for s, _ in CheckpointManager.steps(manager)})
        restored = manager.restore(setup.abstract_state)
    if restored is None:
        which = "any checkpoint" if step is None else f"a checkpoint at step {step}"
        raise FileNotFoundError(
            f"{directory} holds no readable {which}; steps available: {available}."
        )
    state, _ = restored
    return state, int(np.asarray(state.step))


# -----------------------------------------------------------------------------------------
# pieces shared by the commands
# -----------------------------------------------------------------------------------------


def _to_data_space(setup: Setup, x: np.ndarray) -> np.ndarray:
    """Sampler output -> images in ``[0, 1]`` (or 2-D points unchanged)."""
    x = np.asarray(x, np.float32)
    if not setup.is_image:
        return x
    from scoresde.data import inverse_scale

    return np.clip(inverse_scale(x, setup.centered), 0.0, 1.0)


def draw_samples(setup: Setup, variables: dict, key, num: int, batch_size: int) -> np.ndarray:
    """``num`` samples in data space (images in ``[0, 1]``), in calls of ``batch_size``."""
    import jax

    from scoresde.sampling import sample_sharded

    score_fn = setup.make_score(setup.inference_variables(variables))
    n_dev = jax.local_device_count()
    out = []
    for i in range(math.ceil(num / batch_size)):
        b = min(batch_size, num - i * batch_size)
        b_run = -(-b // n_dev) * n_dev
        k = jax.random.fold_in(key, i)
        shape = (b_run, *setup.data_shape)
        if n_dev == 1:
            x, _ = setup.sampler(k, setup.sde, score_fn, shape)
        else:
            x, _ = sample_sharded(setup.sampler, k, setup.sde, score_fn, shape)
        out.append(_to_data_space(setup, _host(x))[:b])
    return np.concatenate(out)


def _samples_arrays(setup: Setup, samples: np.ndarray) -> dict[str, np.ndarray]:
    if setup.is_image:
        from scoresde.logging_utils import to_uint8

        return {"samples": to_uint8(samples), "samples_float": samples.astype(np.float32)}
    return {"samples": samples.astype(np.float32)}


def dataset_bits_per_dim(
    setup: Setup,
    variables: dict,
    *,
    split: str,
    num_repeats: int,
    state_dir: pathlib.Path,
    progress: bool,
    likelihood_kwargs: dict,
):
    """Bits/dim of every example of ``split`` (see :func:`scoresde.evaluate_bits_per_dim`)."""
    from scoresde.data import source_from_config
    from scoresde.experiment import field
    from scoresde.likelihood_eval import evaluate_bits_per_dim

    if not setup.is_image:
        raise ValueError(
            f"bits/dim needs 8-bit image data; data.dataset={setup.config.data.dataset!r} has "
            "2-D points. Set eval.enable_bpd=False."
        )
    source = source_from_config(setup.config, split)

    def get_images(indices: np.ndarray) -> np.ndarray:
        get_batch = getattr(source, "get_batch", None)
        if get_batch is not None:
            return np.asarray(get_batch(indices))
        return np.stack([source[int(i)] for i in indices])

    return evaluate_bits_per_dim(
        setup.sde,
        setup.make_score(setup.inference_variables(variables)),
        get_images,
        num_examples=len(source),
        batch_size=int(field(setup.config, "eval.batch_size")),
        num_repeats=int(num_repeats),
        seed=setup.seed,
        centered=setup.centered,
        state_dir=state_dir,
        progress=progress,
        **likelihood_kwargs,
    )


def _bpd_result(res, *, split: str, step: int) -> dict:
    return {
        "split": split,
        "step": step,
        "bpd": float(res.mean),
        "bpd_stderr": None if not math.isfinite(res.stderr) else float(res.stderr),
        "repeat_means": [float(v) for v in res.repeat_means],
        "num_examples": res.num_examples,
        "num_repeats": res.num_repeats,
        "mean_nfe": float(np.mean(res.nfe)),
    }


def _format_bpd(result: dict) -> str:
    se = result["bpd_stderr"]
    pm = f" ± {se:.4f}" if se is not None else ""
    return (
        f"bits/dim on '{result['split']}' = {result['bpd']:.4f}{pm} "
        f"({result['num_examples']} examples x {result['num_repeats']} repeats, "
        f"step {result['step']})"
    )


def _likelihood_kwargs(fv) -> dict:
    return {"divergence": fv.divergence, "rtol": float(fv.rtol), "atol": float(fv.atol)}


def _likelihood_paths(setup: Setup, split: str, step: int) -> tuple[pathlib.Path, pathlib.Path]:
    base = setup.workdir / LIKELIHOOD_DIR
    return base / f"{split}_step_{step}.json", base / f"{split}_step_{step}_state"


def _eval_loss_fn(setup: Setup):
    """``fn(variables, x, keys) -> mean loss`` of the config's objective, dropout off."""
    import jax

    from scoresde.experiment import loss_fn_from_config

    loss_fn = loss_fn_from_config(setup.config, setup.sde, setup.model, train=False)

    @jax.jit
    def fn(variables, x, keys):
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        return loss_fn(params, model_state, x, keys)[0]

    return fn


def _whole_split_loader(config, split: str = "eval"):
    """An eval loader of the whole split, flat ``(B, ...)`` batches, on every process.

    Evaluation runs the (small) loss computation on the full split in each process, so that
    the number written by process 0 covers every example.
    """
    from scoresde.data import eval_loader_from_config

    return eval_loader_from_config(
        config, split, local_device_count=1, process_index=0, process_count=1, device_axis=False
    )


def dataset_eval_loss(setup: Setup, variables: dict, loader, max_batches: int | None = None):
    """Mean loss over the real (unmasked) examples of an eval loader; per-example keys.

    Args:
      setup: the run's objects.
      variables: the network variables to evaluate (EMA).
      loader: an eval loader with flat batches (:func:`_whole_split_loader`).
      max_batches: evaluate only the first batches.

    Returns:
      ``(mean_loss, num_examples)``.
    """
    import jax

    fn = setup.eval_loss_fn
    base = setup.key(3)
    total, count = 0.0, 0
    batch_size = loader.geometry.batch_size
    for b in range(len(loader) if max_batches is None else min(max_batches, len(loader))):
        batch = loader.batch_at(b)
        mask = np.asarray(batch["mask"])
        x = np.asarray(batch["image"])[mask]
        idx = (b * batch_size + np.arange(len(mask)))[mask]
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)
        loss = float(fn(variables, x, keys))
        total += loss * len(x)
        count += len(x)
    return total / max(count, 1), count


# -----------------------------------------------------------------------------------------
# train
# -----------------------------------------------------------------------------------------


def _chunk_ends(start: int, n_iters: int, freqs: Sequence[int]) -> list[int]:
    """Steps in ``(start, n_iters]`` that are multiples of any of ``freqs``, plus ``n_iters``.

    Example:
      >>> _chunk_ends(0, 10, [4, 6])
      [4, 6, 8, 10]
    """
    ends = {n_iters}
    for f in freqs:
        ends.update(range((start // f + 1) * f, n_iters, f))
    return sorted(e for e in ends if e > start)


def _json_object_flag(name: str, value: str | None) -> dict | None:
    """The JSON object given as ``--name``, or ``None`` when the flag is not set.

    Example:
      >>> _json_object_flag("step_compiler_options", '{"xla_gpu_autotune_level": 1}')
      {'xla_gpu_autotune_level': 1}
    """
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UsageError(
            f"--{name} must be a JSON object such as '{{\"xla_gpu_autotune_level\": 1}}' or "
            f"'{{}}', got {value!r}."
        )
    return parsed


def cmd_train(fv, config) -> int:
    """``scoresde train``: see the module docstring."""
    compiler_options = _json_object_flag("step_compiler_options", fv.step_compiler_options)
    import jax

    from scoresde.checkpoints import CheckpointManager
    from scoresde.data import train_loader_from_config
    from scoresde.experiment import field, loss_fn_from_config
    from scoresde.logging_utils import RunLog, format_duration, progress_bar, save_image_grid
    from scoresde.train import NonFiniteLossError, data_mesh, make_train_step
    from scoresde.train_loop import run_training

    setup = Setup.build(config, fv.workdir)
    primary = jax.process_index() == 0
    training = config.training
    n_iters = int(training.n_iters)
    snapshot_freq = int(training.snapshot_freq)
    log_freq = int(field(config, "training.log_freq", 50))
    eval_freq = int(field(config, "training.eval_freq", 0) or 0)
    preempt_freq = int(field(config, "training.snapshot_freq_for_preemption", snapshot_freq))
    snapshot_sampling = bool(field(config, "training.snapshot_sampling", True))
    final_bpd = bool(config.eval.enable_bpd) if fv.final_bpd is None else bool(fv.final_bpd)
    samples_dir = setup.workdir / SAMPLES_DIR

    log = RunLog(setup.workdir, "train")
    with CheckpointManager(setup.workdir, async_save=False) as manager:
        start = manager.latest_step() or 0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract_state.params))
    log.info(
        f"config {fv.config}: {config.data.dataset} {setup.data_shape}, {config.training.sde}, "
        f"{config.model.name} ({n_params:,} parameters), batch {training.batch_size}, "
        f"{n_iters} steps on {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"workdir {setup.workdir}" + (f"; resuming from step {start}" if start else "")
    )

    loss_fn = loss_fn_from_config(config, setup.sde, setup.model, train=True)
    train_step = make_train_step(
        loss_fn,
        setup.optimizer,
        ema_rate=float(field(config, "model.ema_rate", 0.999)),
        n_jitted_steps=int(field(config, "training.n_jitted_steps", 1)),
        mesh=data_mesh(),
        compiler_options=compiler_options,
    )
    loader = train_loader_from_config(config, device_axis=False)

    def batches(data_state):
        for batch, position in loader.batches(data_state):
            yield batch["image"], position

    eval_loader = _whole_split_loader(config) if eval_freq > 0 else None
    bar = progress_bar(n_iters, initial=start, desc="train", enabled=primary and fv.progress)
    window: list[float] = []
    last = {"loss": float("nan")}

    def log_fn(step: int, metrics: dict) -> None:
        bar.update(1)
        window.append(metrics["loss"])
        last.update(metrics)
        if step % log_freq == 0 or step == n_iters:
            mean = float(np.mean(window))
            window.clear()
            last["mean_loss"] = mean
            bar.set_postfix(loss=f"{mean:.4g}")
            log.scalars(step, {"loss": mean, "grad_norm": metrics["grad_norm"]}, "train/")
            log.info(f"step {step}: loss {mean:.5g}, grad_norm {metrics['grad_norm']:.3g}")

    freqs = [snapshot_freq] + ([eval_freq] if eval_freq > 0 else [])
    state = setup.fresh_state()
    sample_key = setup.key(2)
    num_grid = min(int(config.eval.batch_size), DEFAULT_NUM_SAMPLES)
    t0 = time.time()
    step = start
    try:
        for end in _chunk_ends(start, n_iters, freqs):
            state = run_training(
                state,
                train_step,
                batches,
                workdir=setup.workdir,
                num_steps=end,
                checkpoint_freq=preempt_freq,
                snapshot_freq=snapshot_freq,
                log_fn=log_fn,
            )
            step = int(_host(state.step))
            if eval_loader is not None and step % eval_freq == 0:
                loss, _ = dataset_eval_loss(
                    setup, setup.ema_variables(state), _cycle(eval_loader, step // eval_freq), 1
                )
                log.scalars(step, {"eval_loss": loss}, "eval/")
                log.info(f"step {step}: eval loss {loss:.5g} (EMA, one eval batch)")
            if snapshot_sampling and (step % snapshot_freq == 0 or step >= n_iters):
                samples = draw_samples(
                    setup, setup.ema_variables(state), sample_key, num_grid, num_grid
                )
                if primary:
                    path = samples_dir / f"step_{step}.png"
                    picture = save_image_grid(path, samples)
                    log.image("samples", step, picture)
                    log.info(f"step {step}: samples -> {path}")
    except NonFiniteLossError as e:
        bar.close()
        log.info(f"stopped: {e}")
        log.close()
        return 1
    bar.close()
    elapsed = time.time() - t0
    done = step - start
    if done == 0 and start > 0:  # already trained: report on the saved state
        state, step = _restore(setup)
    summary = (
        f"train done: step {step}/{n_iters}, {done} steps in {format_duration(elapsed)}"
        + (f" ({done / elapsed:.2f} steps/s)" if done and elapsed > 0 else "")
        + (f", loss {last.get('mean_loss', last['loss']):.4g}" if done else "")
    )
    if final_bpd:
        result = _likelihood_command_core(
            setup,
            state,
            step,
            split=str(config.eval.bpd_dataset),
            num_repeats=int(config.eval.num_repeats),
            progress=fv.progress and primary,
            likelihood_kwargs=_likelihood_kwargs(fv),
            log=log,
        )
        summary += f", {_format_bpd(result)}"
    if snapshot_sampling:
        summary += f", samples {samples_dir / f'step_{step}.png'}"
    log.info(summary)
    log.close()
    return 0


class _cycle:
    """An eval loader restricted to one batch, chosen by ``index`` (cycling over the split)."""

    def __init__(self, loader, index: int):
        self.loader, self.index = loader, index % len(loader)
        self.geometry = loader.geometry

    def __len__(self) -> int:
        return 1

    def batch_at(self, b: int) -> dict:
        return self.loader.batch_at(self.index)


# -----------------------------------------------------------------------------------------
# sample, likelihood
# -----------------------------------------------------------------------------------------


def cmd_sample(fv, config) -> int:
    """``scoresde sample``: ``workdir/samples/step_<N>/samples.npz`` and ``samples.png``."""
    import jax

    from scoresde.logging_utils import RunLog, format_duration, save_image_grid, save_npz_atomic

    _require_checkpoints(fv.workdir)
    setup = Setup.build(config, fv.workdir)
    if fv.num_samples < 1:
        raise UsageError(f"--num_samples must be >= 1, got {fv.num_samples}.")
    batch_size = int(fv.batch_size or config.eval.batch_size)
    if batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {batch_size}.")
    state, step = _restore(setup, fv.checkpoint)
    log = RunLog(setup.workdir, "sample")
    t0 = time.time()
    samples = draw_samples(
        setup, setup.ema_variables(state), setup.key(2), int(fv.num_samples), batch_size
    )
    out = setup.workdir / SAMPLES_DIR / f"step_{step}"
    if jax.process_index() == 0:
        save_npz_atomic(out / "samples.npz", **_samples_arrays(setup, samples))
        picture = save_image_grid(out / "samples.png", samples)
        log.image("sample_command", step, picture)
    finite = bool(np.isfinite(samples).all())
    log.info(
        f"sample done: {len(samples)} samples from step {step} in "
        f"{format_duration(time.time() - t0)} -> {out / 'samples.npz'}, {out / 'samples.png'}"
        + ("" if finite else " (WARNING: non-finite values)")
    )
    log.close()
    return 0 if finite else 1


def _likelihood_command_core(
    setup: Setup,
    state,
    step: int,
    *,
    split: str,
    num_repeats: int,
    progress: bool,
    likelihood_kwargs: dict,
    log,
) -> dict:
    import jax

    from scoresde.logging_utils import write_json_atomic

    result_path, state_dir = _likelihood_paths(setup, split, step)
    res = dataset_bits_per_dim(
        setup,
        setup.ema_variables(state),
        split=split,
        num_repeats=num_repeats,
        state_dir=state_dir,
        progress=progress,
        likelihood_kwargs=likelihood_kwargs,
    )
    result = _bpd_result(res, split=split, step=step)
    result["likelihood"] = {k: v for k, v in likelihood_kwargs.items()}
    if jax.process_index() == 0:
        write_json_atomic(result_path, result)
    log.scalars(step, {f"bpd_{split}": result["bpd"]}, "likelihood/")
    log.info(f"{_format_bpd(result)} -> {result_path}")
    return result


def cmd_likelihood(fv, config) -> int:
    """``scoresde likelihood``: bits/dim with repeats -> ``likelihood/<split>_step_<N>.json``."""
    import jax

    from scoresde.logging_utils import RunLog

    _require_checkpoints(fv.workdir)
    setup = Setup.build(config, fv.workdir)
    split = fv.split or str(config.eval.bpd_dataset)
    num_repeats = int(fv.num_repeats or config.eval.num_repeats)
    if num_repeats < 1:
        raise UsageError(f"--num_repeats must be >= 1, got {num_repeats}.")
    state, step = _restore(setup, fv.checkpoint)
    log = RunLog(setup.workdir, "likelihood")
    _likelihood_command_core(
        setup,
        state,
        step,
        split=split,
        num_repeats=num_repeats,
        progress=fv.progress and jax.process_index() == 0,
        likelihood_kwargs=_likelihood_kwargs(fv),
        log=log,
    )
    log.close()
    return 0


# -----------------------------------------------------------------------------------------
# eval
# -----------------------------------------------------------------------------------------


def _checkpoints_to_evaluate(
    config, workdir: pathlib.Path, all_checkpoints: bool
) -> list[tuple[str, int]]:
    """``(name, step)`` pairs to evaluate.

    As in the reference, checkpoint ``k`` of ``[eval.begin_ckpt, eval.end_ckpt]`` is the
    snapshot at step ``k * training.snapshot_freq`` (name ``ckpt_<k>``); with
    ``all_checkpoints`` every saved step is evaluated (name ``step_<N>``).
    """
    from scoresde.checkpoints import CheckpointManager

    if all_checkpoints:
        with CheckpointManager(workdir, async_save=False) as manager:
            steps = sorted({s for s, _ in manager.steps()})
        return [(f"step_{s}", s) for s in steps]
    freq = int(config.training.snapshot_freq)
    begin, end = int(config.eval.begin_ckpt), int(config.eval.end_ckpt)
    return [(f"ckpt_{k}", k * freq) for k in range(begin, end + 1)]


def cmd_eval(fv, config) -> int:
    """``scoresde eval``: per checkpoint ``workdir/eval/ckpt_<k>.json`` (skips finished ones)."""
    import json

    import jax

    from scoresde.logging_utils import (
        RunLog,
        save_image_grid,
        save_npz_atomic,
        write_json_atomic,
    )

    checkpoints = _require_checkpoints(fv.workdir)
    workdir = checkpoints.parent
    setup = None  # built once a checkpoint needs evaluating
    primary = jax.process_index() == 0
    ev = config.eval
    log = RunLog(workdir, "eval")
    todo = _checkpoints_to_evaluate(config, workdir, fv.all_checkpoints)
    if not todo:
        raise FileNotFoundError(f"no checkpoints to evaluate in {checkpoints}.")
    eval_dir = workdir / EVAL_DIR
    enable_loss = bool(ev.get("enable_loss", True))
    enable_bpd = bool(ev.get("enable_bpd", False))
    enable_sampling = bool(ev.get("enable_sampling", False))
    missing = []
    for name, step in todo:
        result_path = eval_dir / f"{name}.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if result.get("complete"):
            log.info(f"{name} (step {step}): already evaluated -> {result_path}")
            continue
        if setup is None:
            setup = Setup.build(config, workdir)
        try:
            state, _ = _restore(setup, step)
        except FileNotFoundError:
            missing.append(step)
            log.info(f"{name}: no checkpoint at step {step}; skipped")
            continue
        variables = setup.ema_variables(state)
        result.update({"name": name, "step": step, "complete": False})
        if enable_loss and "eval_loss" not in result:
            loss, n = dataset_eval_loss(setup, variables, _whole_split_loader(config))
            result.update(eval_loss=loss, eval_loss_examples=n)
            log.scalars(step, {"eval_loss": loss}, "eval/")
            log.info(f"{name} (step {step}): eval loss {loss:.5g} over {n} examples")
            if primary:
                write_json_atomic(result_path, result)
        if enable_bpd and "bpd" not in result:
            split = str(ev.bpd_dataset)
            res = dataset_bits_per_dim(
                setup,
                variables,
                split=split,
                num_repeats=int(ev.num_repeats),
                state_dir=eval_dir / f"{name}_bpd_state",
                progress=fv.progress and primary,
                likelihood_kwargs=_likelihood_kwargs(fv),
            )
            bpd = _bpd_result(res, split=split, step=step)
            result.update({"bpd": bpd["bpd"], "bpd_stderr": bpd["bpd_stderr"], "bpd_details": bpd})
            log.scalars(step, {"bpd": bpd["bpd"]}, "eval/")
            log.info(f"{name}: {_format_bpd(bpd)}")
            if primary:
                write_json_atomic(result_path, result)
        if enable_sampling and "num_samples" not in result:
            sample_dir = eval_dir / name
            num, bs = int(ev.num_samples), int(ev.batch_size)
            for r in range(math.ceil(num / bs)):
                path = sample_dir / f"samples_{r}.npz"
                if path.is_file():
                    continue  # written before a pre-emption
                b = min(bs, num - r * bs)
                key = jax.random.fold_in(jax.random.fold_in(setup.key(4), step), r)
                samples = draw_samples(setup, variables, key, b, bs)
                if primary:
                    save_npz_atomic(path, **_samples_arrays(setup, samples))
                    if r == 0:
                        picture = save_image_grid(sample_dir / "samples.png", samples)
                        log.image("eval/samples", step, picture)
            result.update(num_samples=num, samples_dir=str(sample_dir))
            log.info(f"{name}: {num} samples -> {sample_dir}")
        result["complete"] = True
        if primary:
            write_json_atomic(result_path, result)
        log.info(f"{name} (step {step}) evaluated -> {result_path}")
    done = len(todo) - len(missing)
    log.info(
        f"eval done: {done}/{len(todo)} checkpoint(s) evaluated in {eval_dir}"
        + (f"; no checkpoint at steps {missing}" if missing else "")
    )
    log.close()
    return 0 if done else 1


# -----------------------------------------------------------------------------------------
# entry point
# -----------------------------------------------------------------------------------------

_COMMAND_FNS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "likelihood": cmd_likelihood,
    "eval": cmd_eval,
}


def _initialize_distributed(fv) -> None:
    if not (fv.multihost or fv.coordinator_address or fv.num_processes or fv.process_id):
        return
    from scoresde.train import initialize_distributed

    initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``scoresde COMMAND ...``; returns the exit status (0 on success).

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
      0 on success, 1 when the run failed (non-finite loss, nothing evaluated), 2 for a
      bad command line.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_USAGE)
        return 0 if argv else 2
    if argv[0] in COMMANDS and any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
        print(_USAGE)
        print(f"flags of 'scoresde {argv[0]}':")
        print(_define_flags(argv[0]).get_help(include_special_flags=False))
        return 0
    try:
        command, fv, overrides = parse_command_line(argv)
        configure_xla_flags()
        _initialize_distributed(fv)
        config = load_cli_config(fv.config, overrides)
    except (UsageError, ValueError, FileNotFoundError, TypeError) as e:
        print(f"scoresde: error: {e}\n", file=sys.stderr)
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        configure_compilation_cache(fv.compilation_cache, fv.workdir)
        return _COMMAND_FNS[command](fv, config)
    except (UsageError, FileNotFoundError) as e:
        print(f"scoresde {command}: error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "CLI_DEFAULTS",
    "COMMANDS",
    "Setup",
    "UsageError",
    "XLA_FLAG_DEFAULTS",
    "configure_compilation_cache",
    "configure_xla_flags",
    "dataset_bits_per_dim",
    "dataset_eval_loss",
    "draw_samples",
    "load_cli_config",
    "main",
    "parse_command_line",
]

if __name__ == "__main__":
    sys.exit(main())
