"""The policy server (octo_like/serving): openpi's wire protocol against openpi-client itself, bad
requests, concurrent clients, the API key and health check, SIGTERM draining, and the Meta-World
evaluation through the network equal to the in-process one."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import msgpack
import numpy as np
import pytest
import trained_runs
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from test_vla import STATISTICS, metaworld_like_batch, vla_config
from websockets.exceptions import InvalidStatus

from octo_like.eval.policies import load_checkpoint_policy
from octo_like.eval.rollout import EvalSettings, evaluate
from octo_like.policy.model import PolicyModel
from octo_like.serving.client import AsyncRemotePolicy, RemotePolicy
from octo_like.serving.codec import CodecError, packb, unpackb
from octo_like.serving.server import PolicyServer, ServedPolicy
from octo_like.utils import spec
from octo_like.utils.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny pi0-style release of Meta-World's shapes (two 64x64 cameras, 4-d proprio and actions)."""
    run_dir = str(tmp_path_factory.mktemp("serving") / "release")
    model = PolicyModel.create(vla_config("vla_flow.py"), metaworld_like_batch(), STATISTICS, jax.random.key(0))
    model.save_pretrained(0, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def served(release):
    policy = ServedPolicy(load_checkpoint_policy(release), num_steps=3)
    policy.warm_up()
    return policy


def serving(served, **kwargs):
    """A PolicyServer on a free localhost port, in the background while the block runs."""
    return PolicyServer(served, "127.0.0.1", 0, **kwargs).in_background()


def observation(served, seed=0):
    return served.example_request(seed)


def in_process(served, request):
    window, prompt, seed = served.window(request)
    return served.infer(window, prompt, seed)["actions"]


def test_openpi_client_gets_the_metadata_and_the_in_process_chunk(served):
    with serving(served) as server:
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        metadata = client.get_server_metadata()
        assert metadata["observation_spec"] == {
            "image_primary": {"shape": [1, 64, 64, 3], "dtype": "uint8"},
            "image_wrist": {"shape": [1, 64, 64, 3], "dtype": "uint8"},
            "proprio": {"shape": [1, 4], "dtype": "float32"},
            "prompt": {"shape": [], "dtype": "str"},
        }
        assert metadata["action_dim"] == 4 and metadata["action_horizon"] == 4 and metadata["window_size"] == 1
        request = observation(served, seed=5)
        reply = client.infer(request)
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 4)
        np.testing.assert_array_equal(reply["actions"], in_process(served, request))
        assert reply["server_timing"]["infer_ms"] > 0
        # A different seed samples other noise; the same seed the same chunk again.
        assert not np.array_equal(client.infer({**request, "seed": 6})["actions"], reply["actions"])
        np.testing.assert_array_equal(client.infer(request)["actions"], reply["actions"])


def test_the_codec_is_openpis_format_and_refuses_what_is_not_numbers():
    message = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.float32(2.5), "c": "text"}
    # Each side decodes the other's frames.
    for decoded in (unpackb(openpi_msgpack.packb(message)), openpi_msgpack.unpackb(packb(message))):
        np.testing.assert_array_equal(decoded["a"], message["a"])
        assert decoded["a"].dtype == np.int16 and decoded["b"] == np.float32(2.5) and decoded["c"] == "text"
    with pytest.raises(CodecError, match="cannot send dtype object"):
        packb({"x": np.array([None])})
    forged = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"1234", b"dtype": "|O", b"shape": [1]}})
    with pytest.raises(CodecError, match="refused dtype object"):
        unpackb(forged)
    short = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"12", b"dtype": "<f4", b"shape": [3]}})
    with pytest.raises(CodecError, match=r"array of shape \(3,\) and dtype float32 with 2 bytes of data"):
        unpackb(short)
    with pytest.raises(CodecError, match="not a msgpack message"):
        unpackb(b"\xc1 not msgpack")


def test_every_bad_request_gets_an_error_naming_it_and_the_connection_carries_on(served):
    good = observation(served)
    bad = {
        "text frame": "hello",
        "not msgpack": b"\xc1\xc1\xc1",
        "not a map": packb([1, 2, 3]),
        "missing key": packb({k: v for k, v in good.items() if k != "image_wrist"}),
        "wrong shape": packb({**good, "image_primary": np.zeros((1, 32, 32, 3), np.uint8)}),
        "wrong dtype": packb({**good, "proprio": np.zeros((1, 4), np.float64)}),
        "bad prompt": packb({**good, "prompt": 3}),
        "oversized": packb({**good, "padding": np.zeros(300_000, np.uint8)}),
    }
    expected = {
        "text frame": "expected a binary msgpack frame; got a text frame",
        "not msgpack": "not a msgpack message",
        "not a map": "a request is a map of observation keys; got list",
        "missing key": r"missing 'image_wrist'; expected shape \[1, 64, 64, 3\] dtype uint8",
        "wrong shape": r"'image_primary' has shape \[1, 32, 32, 3\] dtype uint8; expected shape \[1, 64, 64, 3\]",
        "wrong dtype": r"'proprio' has shape \[1, 4\] dtype float64; expected shape \[1, 4\] dtype float32",
        "bad prompt": "'prompt' is int; expected a string",
        "oversized": r"message of \d+ bytes; expected at most 200000",
    }
    with serving(served, max_message_bytes=200_000) as server:
        with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", max_size=None) as connection:
            unpackb(connection.recv())  # metadata
            for name, frame in bad.items():
                connection.send(frame)
                reply = connection.recv()
                assert isinstance(reply, str) and reply.startswith("bad request: "), (name, reply)
                assert re.search(expected[name], reply), (name, reply)
            connection.send(packb(good))  # the same connection still serves
            np.testing.assert_array_equal(unpackb(connection.recv())["actions"], in_process(served, good))
        # openpi-client raises the error frame as RuntimeError.
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        with pytest.raises(RuntimeError, match="missing 'proprio'"):
            client.infer({k: v for k, v in good.items() if k != "proprio"})


def test_a_client_vanishing_without_a_close_frame_ends_its_connection_quietly(served, caplog):
    with serving(served) as server:
        connection = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}")
        unpackb(connection.recv())
        connection.send(packb(observation(served)))
        connection.socket.close()  # no close frame: the process died
        time.sleep(0.5)
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)  # the server carries on
        assert client.infer(observation(served))["actions"].shape == (4, 4)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_four_concurrent_clients_each_get_their_own_chunks(served):
    requests = [observation(served, seed=seed) for seed in range(8)]
    expected = [in_process(served, request) for request in requests]
    replies, errors = {}, []

    def client(worker):
        try:
            policy = WebsocketClientPolicy(host="127.0.0.1", port=port)
            for index in range(worker, 8, 4):
                replies[index] = policy.infer(requests[index])["actions"]
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    with serving(served) as server:
        port = server.port
        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors and sorted(replies) == list(range(8))
    for index in range(8):
        np.testing.assert_array_equal(replies[index], expected[index])


def test_the_api_key_refuses_other_connections_before_inference_and_health_answers(served):
    with serving(served, api_key="secret") as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
            assert response.status == 200
        for headers in (None, {"Authorization": "Api-Key wrong"}):
            with pytest.raises(InvalidStatus, match="401"):
                websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", additional_headers=headers)
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port, api_key="secret")
        assert client.infer(observation(served))["actions"].shape == (4, 4)
        remote = RemotePolicy(f"ws://127.0.0.1:{server.port}", api_key="secret")
        assert remote.cameras == ("primary", "wrist") and remote.image_sizes["wrist"] == (64, 64)
        remote.close()


def test_sigterm_answers_the_request_in_flight_then_exits_0(release):
    process = subprocess.Popen(
        [
            sys.executable,
            "scripts/serve_policy.py",
            f"--checkpoint={release}",
            "--host=127.0.0.1",
            "--port=0",
            "--num_steps=10000",  # a slow chunk (about a second), so that the signal arrives while it is computed
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        while "serving" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read()[-3000:]
        port = int(re.search(r":(\d+) \(health", line).group(1))
        client = WebsocketClientPolicy(host="127.0.0.1", port=port)
        metadata = client.get_server_metadata()
        request = {
            key: np.zeros(value["shape"], value["dtype"])
            for key, value in metadata["observation_spec"].items()
            if key != "prompt"
        }
        client._ws.send(client._packer.pack({**request, "prompt": "open the drawer"}))
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        reply = openpi_msgpack.unpackb(client._ws.recv())
        # Answered, and it was computed across the signal (sent 0.2 s after the request).
        assert reply["actions"].shape == (4, 4) and reply["server_timing"]["infer_ms"] > 500
        assert process.wait(60) == 0
        assert "stopped: the requests in flight were answered" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_the_evaluation_through_the_server_takes_the_in_process_episodes(release, tmp_path):
    settings = EvalSettings(
        tasks=["reach"], episodes_per_task=2, seed=3, max_episode_steps=10, image_size=64, videos_per_task=2
    )
    local = evaluate(spec.create(load_checkpoint_policy, release), settings, num_workers=1, show_progress=False)
    with serving(ServedPolicy(load_checkpoint_policy(release))) as server:
        remote = evaluate(
            spec.create(RemotePolicy, f"ws://127.0.0.1:{server.port}"), settings, num_workers=1, show_progress=False
        )
        # The command line: the image size comes from the server's metadata.
        result = trained_runs.run_script(
            "evaluate.py",
            "--policy=remote",
            f"--address=ws://127.0.0.1:{server.port}",
            "--tasks=reach",
            "--episodes=1",
            "--max_episode_steps=5",
            "--workers=1",
            f"--output_dir={tmp_path / 'eval'}",
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["settings"]["policy"] == "remote" and results["settings"]["image_size"] == 64
    for here, there in zip(local, remote, strict=True):
        assert (here.task, here.index, here.success, here.length) == (
            there.task,
            there.index,
            there.success,
            there.length,
        )
        # Every rendered frame equal: the same actions at every step.
        np.testing.assert_array_equal(np.stack(here.frames), np.stack(there.frames))


def test_async_inference_executes_every_step_and_requests_ahead_of_the_queue(served):
    with serving(served) as server:
        policy = AsyncRemotePolicy(f"ws://127.0.0.1:{server.port}", overlap=1)
        assert policy.action_horizon == 1 and policy.window_size == 1
        policy.reset("reach", "reach the goal")
        request = observation(served)
        window = {key: value for key, value in request.items() if key.startswith("image_")}
        window.update(proprio=request["proprio"], timestep_pad_mask=np.ones(1, bool), timestep=np.zeros(1, np.int32))
        rng = np.random.default_rng(0)
        actions = [policy(window, rng) for _ in range(12)]
        assert all(action.shape == (1, 4) and action.dtype == np.float32 for action in actions)
        # With a 4-action chunk and the next requested when 1 is left, a chunk covers at most 3
        # steps once the first arrived: at least 4 requests for 12 steps, at most one per step.
        assert 4 <= policy.requests <= 12
        with pytest.raises(InputError, match="overlap=4; expected 0 .. 3"):
            AsyncRemotePolicy(f"ws://127.0.0.1:{server.port}", overlap=4)
        policy.close()


def test_serve_policy_refuses_an_exec_horizon_longer_than_the_chunk(release):
    result = trained_runs.run_script("serve_policy.py", f"--checkpoint={release}", "--exec_horizon=9", timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --exec_horizon: exec_horizon=9; expected 1 .. the chunk's 4 actions"
    ]
