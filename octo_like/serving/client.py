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


class AsyncRemotePolicy:
    """LeRobot's asynchronous inference over a RemotePolicy: actions are returned one per call
    (`action_horizon` 1), from a queue holding the rest of the last chunk; when `overlap` or fewer
    actions are left, the next chunk is requested for the current observation in the background,
    so the robot keeps executing while the server computes. A chunk that arrives after k further
    actions were executed drops its first k (they were meant for steps already taken). With
    `overlap=0` the next request goes out only when the queue is empty: synchronous, one chunk at a
    time. Timing decides which chunk an action comes from, so episodes are not reproducible.
    """

    action_horizon = 1

    def __init__(self, address: str, api_key: str | None = None, overlap: int = 1):
        import concurrent.futures

        self.remote = RemotePolicy(address, api_key)
        if not 0 <= overlap < self.remote.action_horizon:
            raise InputError(
                f"overlap={overlap}; expected 0 .. {self.remote.action_horizon - 1} (the chunk is shorter)"
            )
        self.overlap = overlap
        self.window_size, self.cameras, self.action_dim = (
            self.remote.window_size,
            self.remote.cameras,
            self.remote.action_dim,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._queue, self._pending, self._executed_since_request = [], None, 0
        self.requests = 0

    def check_fits(self, env_cameras, action_dim: int) -> None:
        self.remote.check_fits(env_cameras, action_dim)

    def reset(self, task: str, instruction: str) -> None:
        if self._pending is not None:
            self._pending.result()
        self._queue, self._pending, self._executed_since_request = [], None, 0
        self.remote.reset(task, instruction)

    def _take_arrived_chunk(self, wait: bool) -> None:
        if self._pending is None or not (wait or self._pending.done()):
            return
        chunk_HA = self._pending.result()
        self._queue = list(chunk_HA[self._executed_since_request :])
        self._pending = None

    def _request(self, observation_window, rng) -> None:
        request = self.remote.request(observation_window, int(rng.integers(2**31)))
        self._pending = self._executor.submit(lambda: np.asarray(self.remote.infer(request)["actions"], np.float32))
        self._executed_since_request = 0
        self.requests += 1

    def __call__(self, observation_window, rng):
        self._take_arrived_chunk(wait=False)
        if self._pending is None and len(self._queue) <= self.overlap:
            self._request(observation_window, rng)
        while not self._queue:  # nothing left to execute: wait (and ask again if the chunk came too late)
            if self._pending is None:
                self._request(observation_window, rng)
            self._take_arrived_chunk(wait=True)
        self._executed_since_request += 1
        return self._queue.pop(0)[None]

    def close(self) -> None:
        self._executor.shutdown()
        self.remote.close()
