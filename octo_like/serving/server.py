"""A release served over websockets in openpi's protocol, so that a robot computer (or
`openpi-client`'s WebsocketClientPolicy, unchanged) asks a GPU box for action chunks.

The protocol:
- on connect the server sends one metadata message (`ServedPolicy.metadata`): the observation
  spec (key -> {"shape": [...], "dtype": ...}; the images at the release's sizes, the proprio, the
  instruction as "prompt"), the action dimension, the chunk length, the window;
- each request is a binary msgpack frame (octo_like.serving.codec) holding an observation dict;
  optional keys: "seed" (an int: the sampling key, so that a client reproduces an in-process
  run), "timestep_pad_mask" and "timestep" (default: every step of the window is real);
- a request that carries "timestep" (each frame's environment step, as `RemotePolicy` and the
  HistoryWrapper give it) lets the connection reuse its episode cache (octo_like/policy/
  episode_cache.py): the task's and the earlier frames' keys and values, so each request encodes
  only the new frame. A connection's episode restarts when the prompt changes or the newest
  timestep does not advance past the previous request's; one connection is one client's stream;
- each reply is {"actions": float32 [H, A] (unnormalized, ready to execute), "server_timing":
  {"infer_ms": ...}}; a bad request gets a text frame naming the key and what was expected (the
  client raises it), and the connection carries on.

Requests from every connection are queued onto the one model (a single inference thread); each
observation shape compiles once, and the server warms up before it accepts connections. An HTTP
GET of /healthz answers 200. With an API key, a connection without the header
`Authorization: Api-Key KEY` is refused (401) before any inference. SIGTERM stops new
connections, lets the requests in flight finish and be answered, then exits.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http
import logging
import signal
import threading
import time
from collections.abc import Mapping

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from octo_like.eval.policies import CheckpointPolicy
from octo_like.serving.codec import CodecError, packb, unpackb

HEALTH_PATH = "/healthz"
API_KEY_VARIABLE = "OCTO_LIKE_API_KEY"  # where serve_policy.py and evaluate.py read a key not given as a flag
DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20


class RequestError(ValueError):
    """A request the server answers with an error frame (one line)."""


@dataclasses.dataclass
class ConnectionEpisode:
    """What one connection reuses between its requests: the episode cache of its current prompt."""

    prompt: str | None = None
    cache: object = None
    newest_timestep: int = -1


class ServedPolicy:
    """A CheckpointPolicy behind the server: the observation spec, request checks, inference."""

    def __init__(self, policy: CheckpointPolicy, exec_horizon: int | None = None, num_steps: int | None = None):
        self.policy = policy
        self.exec_horizon = exec_horizon or policy.action_horizon
        if not 1 <= self.exec_horizon <= policy.action_horizon:
            raise ValueError(f"exec_horizon={exec_horizon}; expected 1 .. the chunk's {policy.action_horizon} actions")
        if num_steps is not None:
            # The VLA kinds name their denoising steps num_steps; the from-scratch heads num_inference_steps.
            vla = policy.model.config["model"].get("vla") is not None
            policy.sampling = {("num_steps" if vla else "num_inference_steps"): num_steps}
        self._tasks: dict[str, Mapping] = {}
        window = policy.window_size
        spec = {
            f"image_{camera}": {"shape": [window, *size, 3], "dtype": "uint8"}
            for camera, size in policy.image_sizes.items()
        }
        if "proprio" in policy.model.example_batch["observation"]:
            dim = int(np.asarray(policy.statistics["proprio"]["mean"]).shape[-1])
            spec["proprio"] = {"shape": [window, dim], "dtype": "float32"}
        spec["prompt"] = {"shape": [], "dtype": "str"}
        self.observation_spec = spec

    @property
    def metadata(self) -> dict:
        return {
            "observation_spec": self.observation_spec,
            "optional": {
                "seed": {"shape": [], "dtype": "int"},
                "timestep_pad_mask": {"shape": [self.policy.window_size], "dtype": "bool"},
                "timestep": {"shape": [self.policy.window_size], "dtype": "int32"},
            },
            "action_dim": self.policy.action_dim,
            "action_horizon": self.exec_horizon,
            "chunk_length": self.policy.action_horizon,
            "window_size": self.policy.window_size,
            "cameras": list(self.policy.cameras),
            "proprio_source": self.policy.proprio_key,  # the environment observation "proprio" is
        }

    def window(self, request) -> tuple[dict, str, int | None]:
        """(the observation window CheckpointPolicy reads, the prompt, the seed) of a request."""
        if not isinstance(request, dict):
            raise RequestError(f"a request is a map of observation keys; got {type(request).__name__}")
        window = {}
        for key, expected in self.observation_spec.items():
            if key not in request:
                raise RequestError(f"missing '{key}'; expected shape {expected['shape']} dtype {expected['dtype']}")
            value = request[key]
            if key == "prompt":
                if not isinstance(value, str):
                    raise RequestError(f"'prompt' is {type(value).__name__}; expected a string")
                continue
            if (
                not isinstance(value, np.ndarray)
                or list(value.shape) != expected["shape"]
                or value.dtype != np.dtype(expected["dtype"])
            ):
                got = f"shape {list(value.shape)} dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value)
                raise RequestError(f"'{key}' has {got}; expected shape {expected['shape']} dtype {expected['dtype']}")
            window[self.policy.proprio_key if key == "proprio" else key] = value
        steps = self.policy.window_size
        window["timestep_pad_mask"] = np.asarray(request.get("timestep_pad_mask", np.ones(steps, bool)), bool)
        window["timestep"] = np.asarray(request.get("timestep", np.arange(steps)), np.int32)
        for key in ("timestep_pad_mask", "timestep"):
            if window[key].shape != (steps,):
                raise RequestError(f"'{key}' has shape {list(window[key].shape)}; expected shape [{steps}]")
        seed = request.get("seed")
        if seed is not None and not isinstance(seed, int | np.integer):
            raise RequestError(f"'seed' is {type(seed).__name__}; expected an integer")
        return window, request["prompt"], None if seed is None else int(seed)

    def infer(self, window: dict, prompt: str, seed: int, episode: ConnectionEpisode | None = None) -> dict:
        """The reply to one request; with the connection's `episode` (requests that carry their
        timesteps), the episode cache is reused, or restarted on a new prompt or a timestep that
        does not advance."""
        if prompt not in self._tasks:
            self._tasks[prompt] = self.policy.model.create_tasks(texts=[prompt])
        task = self._tasks[prompt]
        start = time.perf_counter()
        cache = None
        if episode is not None:
            newest_timestep = int(window["timestep"][-1])
            if episode.prompt != prompt or newest_timestep <= episode.newest_timestep:
                episode.prompt, episode.cache = prompt, self.policy.new_cache(task)
            episode.newest_timestep = newest_timestep
            cache = episode.cache
        actions_HA = self.policy.sample(window, seed, task, cache)[: self.exec_horizon]
        return {"actions": actions_HA, "server_timing": {"infer_ms": 1000 * (time.perf_counter() - start)}}

    def example_request(self, seed: int = 0, prompt: str = "open the drawer") -> dict:
        """A request of the spec's shapes with random contents (warm-up, benchmarks, tests)."""
        rng = np.random.default_rng(seed)
        request = {
            key: (
                rng.integers(0, 255, spec["shape"]) if spec["dtype"] == "uint8" else rng.normal(size=spec["shape"])
            ).astype(spec["dtype"])
            for key, spec in self.observation_spec.items()
            if key != "prompt"
        }
        return {**request, "prompt": prompt, "seed": seed}

    def warm_up(self) -> None:
        """One inference: the request shape compiles before any client waits."""
        self.infer(*self.window(self.example_request()))


class PolicyServer:
    def __init__(
        self,
        served: ServedPolicy,
        host: str = "0.0.0.0",
        port: int = 8000,
        api_key: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.served, self.host, self.port, self.api_key = served, host, port, api_key
        self.max_message_bytes = max_message_bytes
        # One thread: requests of every connection are queued onto the one model, in arrival order.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._in_flight = 0
        self._draining = False
        self._seed = 0

    def _process_request(self, connection: ServerConnection, request: Request):
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if self.api_key is not None and request.headers.get("Authorization") != f"Api-Key {self.api_key}":
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key ...'\n")
        return None

    async def _reply(self, connection: ServerConnection, frame, episode: ConnectionEpisode) -> None:
        if isinstance(frame, str):
            raise RequestError("expected a binary msgpack frame; got a text frame")
        if len(frame) > self.max_message_bytes:
            raise RequestError(f"message of {len(frame)} bytes; expected at most {self.max_message_bytes}")
        if self._draining:
            raise RequestError("the server is shutting down")
        try:
            request = unpackb(frame)
        except CodecError as error:
            raise RequestError(str(error)) from None
        window, prompt, seed = self.served.window(request)
        if seed is None:
            seed, self._seed = self._seed, self._seed + 1
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(
                self._executor, self.served.infer, window, prompt, seed, episode if "timestep" in request else None
            )
            await connection.send(packb(reply))
        finally:
            self._in_flight -= 1

    async def _handle(self, connection: ServerConnection) -> None:
        # A client that goes away without a close frame (a robot process killed, an evaluation
        # worker exiting) ends its connection quietly.
        with contextlib.suppress(ConnectionClosed):
            await connection.send(packb(self.served.metadata))
            episode = ConnectionEpisode()
            async for frame in connection:
                try:
                    await self._reply(connection, frame, episode)
                except RequestError as error:
                    await connection.send(f"bad request: {error}")
                except ConnectionClosed:
                    raise
                except Exception as error:  # noqa: BLE001 - the connection and the other clients carry on
                    logging.exception("inference failed")
                    await connection.send(f"inference failed: {type(error).__name__}: {error}")

    @contextlib.contextmanager
    def in_background(self, timeout: float = 120.0):
        """Serves on its own event loop in a thread while the block runs (a notebook, a benchmark,
        a test); `self.port` is the bound port inside the block."""
        loop = asyncio.new_event_loop()
        ready, stop = asyncio.Event(), asyncio.Event()
        thread = threading.Thread(target=loop.run_until_complete, args=(self.run(ready, stop),), daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not ready.is_set():
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the policy server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout)
            loop.close()

    async def run(self, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serves until `stop` is set (or SIGTERM / SIGINT when `stop` is None), then drains."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
        async with serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=4 * self.max_message_bytes,  # above the answered limit: the connection closes
        ) as server:
            self.port = server.sockets[0].getsockname()[1]  # the chosen one, with port 0
            if ready is not None:
                ready.set()
            await stop.wait()
            self._draining = True
            server.close(close_connections=False)  # no new connections; the open ones finish
            while self._in_flight:
                await asyncio.sleep(0.01)
            for connection in list(server.connections):
                await connection.close()
        self._executor.shutdown()
