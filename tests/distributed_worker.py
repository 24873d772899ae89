"""One process of a multi-process training run for tests/test_distributed.py (not a test itself).

    python tests/distributed_worker.py OUT_DIR PROCESS_ID NUM_PROCESSES PORT

Trains the small policy of test_policy.py for STEPS steps on a fixed global batch sequence over a
2 x 2 (data x fsdp) mesh of 4 devices, which are either this one process's 4 devices
(NUM_PROCESSES=1) or 2 devices in each of 2 processes joined by jax.distributed. Each process feeds
only its own rows of every global batch, all processes save the final state to OUT_DIR/checkpoints
with orbax, and process 0 writes OUT_DIR/result.npz (per-step losses and the final parameters,
gathered from all processes).
"""

import os
import sys

import numpy as np

STEPS = 3
GLOBAL_BATCH = 8


def global_batch(step: int) -> dict:
    from test_policy import example_batch  # this script's folder (tests/) is on sys.path

    parts = [example_batch(seed=100 * step + index) for index in range(GLOBAL_BATCH // 2)]
    return {
        key: _concatenate([part[key] for part in parts]) for key in ("observation", "task", "action", "action_pad_mask")
    }


def _concatenate(values):
    if isinstance(values[0], dict):
        return {key: _concatenate([value[key] for value in values]) for key in values[0]}
    return np.concatenate(values)


def main(out_dir: str, process_id: int, num_processes: int, port: int) -> None:
    from octo_like.train import distributed

    if num_processes > 1:
        distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
        )

    import jax
    import optax
    from jax.experimental import multihost_utils
    from test_policy import STATISTICS, small_config

    from octo_like.policy import release
    from octo_like.policy.model import PolicyModel
    from octo_like.train.mesh import batch_sharding, make_mesh, shard_batch, shard_params
    from octo_like.train.state import TrainState
    from octo_like.train.step import make_train_step

    assert jax.process_count() == num_processes and jax.device_count() == 4, (jax.process_count(), jax.devices())
    config = small_config()
    config["model"]["language"] = None  # the frozen MiniLM is not what this test is about
    model = PolicyModel.create(config, global_batch(0), STATISTICS, jax.random.key(0))
    mesh = make_mesh(data=2, fsdp=2)
    # Plain SGD: Adam divides by the gradient's running RMS, which turns the pure rounding noise of
    # parameters whose true gradient is zero (attention key biases) into full-sized, random updates.
    optimizer = optax.sgd(0.05)
    # A low FSDP threshold so that the small model's kernels are really split over fsdp.
    state = shard_params(TrainState.create(model.params, optimizer, jax.random.key(1)), mesh, fsdp_min_size=256)
    train_step = make_train_step(
        model.loss,
        optimizer,
        donate=False,
        state_shardings=jax.tree_util.tree_map(lambda x: x.sharding, state),
        batch_sharding=batch_sharding(mesh),
    )
    local_rows = slice(process_id * GLOBAL_BATCH // num_processes, (process_id + 1) * GLOBAL_BATCH // num_processes)
    losses = []
    with jax.set_mesh(mesh):
        for step in range(STEPS):
            local_batch = jax.tree_util.tree_map(lambda x: x[local_rows], global_batch(step))
            state, metrics = train_step(state, shard_batch(local_batch, mesh))
            losses.append(float(metrics["loss"]))

    manager = release.checkpoint_manager(os.path.join(out_dir, "checkpoints"))
    release.save(manager, STEPS, state.params, state)
    manager.wait_until_finished()
    params = multihost_utils.process_allgather(state.params, tiled=True)
    kernel = state.params["block_transformer"]["block_0"]["mlp_hidden"]["kernel"]
    if process_id == 0:
        flat = {
            jax.tree_util.keystr(path, simple=True, separator="."): np.asarray(value)
            for path, value in jax.tree_util.tree_leaves_with_path(params)
        }
        np.savez(
            os.path.join(out_dir, "result.npz"),
            losses=np.asarray(losses),
            kernel_shard_shape=np.asarray(kernel.addressable_shards[0].data.shape),
            **flat,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
