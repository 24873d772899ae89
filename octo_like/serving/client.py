"""`RemotePolicy`: the evaluation `Policy` interface (octo_like/eval/policies.py) answered by a policy
server (octo_like/serving/server.py) over the network, so that `scripts/evaluate.py
--policy=remote --address=ws://HOST:PORT` runs the same Meta-World evaluation through it.

The client reads the server's metadata (cameras and their image sizes, window, chunk length, the
environment observation its proprio comes from), resizes the rendered images as the release's
data pipeline did (the same function the in-process policy uses), and sends the sampling seed it
draws from the evaluation's generator, so that an episode through the server takes the same
actions as in-process.
"""

from collections.abc import Mapping

import numpy as np
from websockets.sync.client import connect

from octo_like.eval.policies import resize_like_training
from octo_like.serving.codec import packb, unpackb
from octo_like.utils.errors import InputError


class RemotePolicy:
    def __init__(self, address: str, api_key: str | None = None, open_timeout: float = 30.0):
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        try:
            self._connection = connect(
                address, additional_headers=headers, compression=None, max_size=None, open_timeout=open_timeout
            )
        except (OSError, TimeoutError) as error:
            raise InputError(f"no policy server at {address} ({type(error).__name__}: {error})") from None
        self.metadata = unpackb(self._connection.recv())
        spec = self.metadata["observation_spec"]
        self.window_size = int(self.metadata["window_size"])
        self.action_horizon = int(self.metadata["action_horizon"])
        self.action_dim = int(self.metadata["action_dim"])
        self.cameras = tuple(self.metadata["cameras"])
        self.image_sizes = {camera: tuple(spec[f"image_{camera}"]["shape"][1:3]) for camera in self.cameras}
        self._prompt = None

    def check_fits(self, env_cameras, action_dim: int) -> None:
        if self.action_dim != action_dim:
            raise InputError(
                f"the served policy predicts {self.action_dim}-d actions; the environment expects {action_dim}-d"
            )
        missing = sorted(set(self.cameras) - set(env_cameras))
        if missing:
            raise InputError(
                f"the served policy reads camera(s) {missing}; the environment renders {sorted(env_cameras)}"
            )

    def reset(self, task: str, instruction: str) -> None:
        del task
        self._prompt = instruction

    def request(self, observation_window: Mapping, seed: int) -> dict:
        """The request of an environment observation window (HistoryWrapper's)."""
        request = {
            f"image_{camera}": resize_like_training(observation_window[f"image_{camera}"], size)
            for camera, size in self.image_sizes.items()
        }
        if "proprio" in self.metadata["observation_spec"]:
            request["proprio"] = np.asarray(observation_window[self.metadata["proprio_source"]], np.float32)
        request["timestep_pad_mask"] = np.asarray(observation_window["timestep_pad_mask"], bool)
        request["timestep"] = np.asarray(observation_window["timestep"], np.int32)
        return {**request, "prompt": self._prompt, "seed": seed}

    def infer(self, request: Mapping) -> dict:
        """One round trip; a text frame (the server's error) is raised as RuntimeError, as openpi does."""
        self._connection.send(packb(dict(request)))
        reply = self._connection.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"policy server: {reply}")
        return unpackb(reply)

    def __call__(self, observation_window, rng):
        # The draw CheckpointPolicy makes, so that the server samples with the same key.
        seed = int(rng.integers(2**31))
        return np.asarray(self.infer(self.request(observation_window, seed))["actions"], np.float32)

    def close(self) -> None:
        self._connection.close()
