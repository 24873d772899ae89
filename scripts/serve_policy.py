"""Serve a release to robots: a websocket policy server speaking openpi's protocol.

    python scripts/serve_policy.py --checkpoint runs/RUN_DIR [--step N] [--host 0.0.0.0] [--port 8000] \
        [--num_steps K] [--exec_horizon H] [--api_key KEY]

Loads the release (either model family), compiles and warms up its `sample_actions` for a batch of
one, then serves: on connect one metadata message (the observation spec, action dimension, chunk
length), then an action chunk per observation (octo_like/serving/server.py). `openpi-client`'s
WebsocketClientPolicy works against it unchanged; `scripts/evaluate.py --policy=remote
--address=ws://HOST:PORT` runs the Meta-World evaluation through it. GET /healthz answers 200.
With --api_key (or OCTO_LIKE_API_KEY), connections without `Authorization: Api-Key KEY` are
refused. SIGTERM finishes the requests in flight, then exits 0.
"""

import asyncio
import os

from absl import flags

from octo_like.eval.policies import load_checkpoint_policy
from octo_like.policy.release import check_release
from octo_like.serving.server import API_KEY_VARIABLE, PolicyServer, ServedPolicy
from octo_like.utils.cli import run_config_cli
from octo_like.utils.errors import InputError

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory of the release to serve.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_DATASET_NAME = flags.DEFINE_string("dataset_name", None, "Whose action statistics unnormalize (several datasets).")
_HOST = flags.DEFINE_string("host", "0.0.0.0", "Interface to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "Port (0: any free one; the chosen one is printed).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Denoising / Euler steps per chunk (default: the release's).")
_EXEC_HORIZON = flags.DEFINE_integer("exec_horizon", None, "Actions returned per chunk (default: the whole chunk).")
_API_KEY = flags.DEFINE_string("api_key", None, f"Refuse connections without this key (default: ${API_KEY_VARIABLE}).")


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}; only flags are accepted")
    if not _CHECKPOINT.value:
        raise InputError("--checkpoint=RUN_DIR is required")
    check_release(_CHECKPOINT.value, _STEP.value)
    if _NUM_STEPS.value is not None and _NUM_STEPS.value < 1:
        raise InputError(f"--num_steps={_NUM_STEPS.value}; expected a positive number of steps")
    policy = load_checkpoint_policy(_CHECKPOINT.value, _STEP.value, _DATASET_NAME.value)
    try:
        served = ServedPolicy(policy, exec_horizon=_EXEC_HORIZON.value, num_steps=_NUM_STEPS.value)
    except ValueError as error:
        raise InputError(f"--exec_horizon: {error}") from None
    served.warm_up()
    server = PolicyServer(
        served, _HOST.value, _PORT.value, api_key=_API_KEY.value or os.environ.get(API_KEY_VARIABLE) or None
    )

    async def serve_until_stopped():
        ready = asyncio.Event()
        task = asyncio.create_task(server.run(ready))
        await ready.wait()
        print(f"serving {_CHECKPOINT.value} on ws://{_HOST.value}:{server.port} (health: /healthz)", flush=True)
        await task

    asyncio.run(serve_until_stopped())
    print("stopped: the requests in flight were answered", flush=True)


if __name__ == "__main__":
    run_config_cli(main)
