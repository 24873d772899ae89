"""The run settings every training config carries (what octo_like/train/loop.py reads besides
model, optimizer and dataset), so experiment configs state only what differs."""

import ml_collections
from ml_collections import config_dict


def training_run_config(run_dir: str, num_steps: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.run_dir = run_dir
    config.num_steps = num_steps
    config.log_interval = 50
    config.eval_interval = 500
    config.eval_batches = 4
    config.save_interval = 1000
    config.max_checkpoints_to_keep = config_dict.placeholder(int)  # None: keep every saved step
    config.keep_checkpoint_every = config_dict.placeholder(int)  # steps divisible by it survive max_checkpoints_to_keep
    config.mesh = dict(data=-1, fsdp=1)
    # Multi-process runs (octo_like/train/distributed.py): a coordinator "host:port" with the
    # process count and this process's id, or auto=True where JAX detects them (TPU pods, SLURM).
    config.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address=config_dict.placeholder(str),
            num_processes=config_dict.placeholder(int),
            process_id=config_dict.placeholder(int),
            auto=False,
        )
    )
    # Closed-loop Meta-World success of saved steps, in a separate process (octo_like/train/rollout_eval.py):
    # set tasks (e.g. "mt10") to turn it on; interval is a multiple of save_interval.
    config.rollout_eval = ml_collections.ConfigDict(
        dict(
            tasks=config_dict.placeholder(str),
            episodes=10,
            interval=1000,
            workers=1,
            seed=0,
            max_episode_steps=500,
        )
    )
    config.compute_dtype = (
        "float32"  # "bfloat16": parameters cast to bf16 inside the step; fp32 master copy and optimizer state
    )
    config.grad_accumulation_steps = 1
    return config
