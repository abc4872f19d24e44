"""Runs a tiny training job; optionally SIGKILLs itself right after logging a given step.

Usage: python train_worker.py WORKDIR NUM_STEPS LOSSES_FILE [KILL_AT_STEP] [STEP_SLEEP]

Appends ``step loss.hex()`` lines to LOSSES_FILE (flushed, so they survive SIGKILL).
"""

import os
import signal
import sys
import time

import jax

jax.config.update("jax_platforms", "cpu")

from tiny_setup import batches, setup  # noqa: E402

import scoresde as sd  # noqa: E402


def main():
    workdir, num_steps, losses_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    step_sleep = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    state, step = setup()
    out = open(losses_file, "a")

    def log_fn(i, metrics):
        out.write(f"{i} {float(metrics['loss']).hex()}\n")
        out.flush()
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step_sleep:
            time.sleep(step_sleep)

    sd.run_training(
        state,
        step,
        batches(),
        workdir=workdir,
        num_steps=num_steps,
        checkpoint_freq=3,
        snapshot_freq=5,
        log_fn=log_fn,
    )
    out.write("done\n")
    out.close()


if __name__ == "__main__":
    main()
