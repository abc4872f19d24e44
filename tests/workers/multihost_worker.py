"""Data-parallel equivalence worker.

Usage:
  python multihost_worker.py single OUT.npz
      (run with XLA_FLAGS=--xla_force_host_platform_device_count=4) trains NUM_STEPS steps
      on a mesh of 1 device and on a mesh of all 4, from the same state and global batches.
  python multihost_worker.py proc OUT.npz PORT PROCESS_ID [WORKDIR]
      (run twice, with 2 forced CPU devices each) joins a 2-process run on localhost:PORT
      through jax.distributed and trains on the 4 global devices; each process feeds only
      its own rows of every global batch. With WORKDIR it runs ``run_training`` there
      instead (checkpoints shared by both processes, resuming if present).
"""

import sys

import jax

jax.config.update("jax_platforms", "cpu")

NUM_STEPS = 4


def run(step_mesh, rows=None):
    from tiny_setup import data_batch, setup

    state, step = setup(mesh=step_mesh)
    state = step.replicate(state)
    losses = []
    for i in range(NUM_STEPS):
        x = data_batch(i)
        state, metrics = step(state, step.shard_batch(x if rows is None else x[rows]))
        losses.append(float(jax.device_get(metrics["loss"].addressable_data(0))))
    params = [jax.device_get(p.addressable_data(0)) for p in jax.tree.leaves(state.params)]
    return losses, params


def main():
    import numpy as np

    mode, out = sys.argv[1], sys.argv[2]
    if mode == "single":
        import scoresde as sd

        assert jax.device_count() == 4, jax.devices()
        losses1, params1 = run(sd.data_mesh(jax.devices()[:1]))
        losses4, params4 = run(sd.data_mesh(jax.devices()))
        np.savez(
            out,
            losses1=losses1,
            losses4=losses4,
            **{f"p1_{i}": p for i, p in enumerate(params1)},
            **{f"p4_{i}": p for i, p in enumerate(params4)},
        )
    else:
        port, pid = int(sys.argv[3]), int(sys.argv[4])
        import scoresde as sd

        sd.initialize_distributed(f"localhost:{port}", 2, pid)
        assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
        assert jax.local_device_count() == 2
        from tiny_setup import GLOBAL_BATCH

        mesh = sd.data_mesh()
        rows = sd.process_batch_slice(GLOBAL_BATCH, mesh)
        assert rows == slice(4 * pid, 4 * pid + 4), rows
        if len(sys.argv) > 5:
            from tiny_setup import batches, setup

            state, step = setup(mesh=mesh)
            logged = {}
            state = sd.run_training(
                state,
                step,
                batches(rows),
                workdir=sys.argv[5],
                num_steps=2 * NUM_STEPS,
                checkpoint_freq=2,
                snapshot_freq=3,
                log_fn=lambda i, m: logged.update({i: m["loss"]}),
            )
            np.savez(out, steps=sorted(logged), losses=[logged[k] for k in sorted(logged)])
        else:
            losses, params = run(mesh, rows)
            np.savez(out, losses=losses, **{f"p_{i}": p for i, p in enumerate(params)})
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
