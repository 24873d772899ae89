"""Meta-World tasks as environments that speak the batch contract, with fast headless rendering.

    env = MetaWorldEnv("drawer-open-v3", cameras={"primary": "corner", "wrist": "gripperPOV"})
    observation, info = env.reset(seed=0)   # {"image_primary": uint8[S, S, 3], "image_wrist": ...,
                                            #  "proprio": float32[4], "state": float32[39]}
    observation, reward, terminated, truncated, info = env.step(action_4)

- Task variations are the benchmark's own: `metaworld.MT1(task, seed=benchmark_seed)` draws 50
  randomized object/goal placements; each `reset(seed)` picks one of them from the seed, so one
  seed always gives the same episode start.
- `proprio` is the end-effector position and the gripper opening (state[0:4]); `state` is the full
  39-d Meta-World observation.
- An episode terminates on success (`info["success"]`) and is truncated after `max_episode_steps`.
- Rendering uses `mujoco.Renderer` with multisampling, shadows and reflections off (about 8x
  faster than the default at 128x128), and the corner cameras, which Meta-World defines upside
  down, are flipped so that the table is below the arm. Collection and evaluation both render here,
  so their images match pixel for pixel.
- Headless rendering goes through EGL unless MUJOCO_GL is set (`MUJOCO_GL=osmesa` needs the
  Debian package libosmesa6).
"""

import atexit
import os
import warnings
import weakref

os.environ.setdefault("MUJOCO_GL", "egl")
# The scripted experts warn on every action whose gains exceed the [-1, 1] the env clips to anyway.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

from octo_like.eval.envs.metaworld_tasks import CAMERAS, resolve_tasks  # noqa: E402
from octo_like.utils.errors import InputError  # noqa: E402

# Cameras whose image comes out with the table above the arm (checked by eye at 128x128).
UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner4"})
DEFAULT_CAMERAS = {"primary": "corner", "wrist": "gripperPOV"}
PROPRIO_DIM = 4
STATE_DIM = 39
ACTION_DIM = 4


def _close_renderer_if_alive(renderer_ref: weakref.ref) -> None:
    renderer = renderer_ref()
    if renderer is None:
        return
    try:
        renderer.close()
    except Exception:  # noqa: BLE001  at process exit EGL may already be torn down; nothing is left to free
        pass


class MetaWorldEnv(gym.Env):
    """One Meta-World task; observations are dicts of camera images, proprio and the full state."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: str,
        *,
        cameras: dict[str, str] | None = None,
        image_size: int = 128,
        max_episode_steps: int = 500,
        benchmark_seed: int = 0,
    ):
        (self.task,) = resolve_tasks([task])
        self.cameras = dict(DEFAULT_CAMERAS if cameras is None else cameras)
        unknown = sorted(set(self.cameras.values()) - set(CAMERAS))
        if unknown:
            raise InputError(f"unknown Meta-World camera(s) {unknown}; expected some of {', '.join(CAMERAS)}")
        self.image_size = image_size
        self.max_episode_steps = max_episode_steps
        benchmark = metaworld.MT1(self.task, seed=benchmark_seed)
        self.variations = benchmark.train_tasks
        self._env = benchmark.train_classes[self.task]()
        # Meta-World stops an episode itself at max_path_length; ours decides, so lift its limit.
        self._env.max_path_length = max(self._env.max_path_length, max_episode_steps + 1)
        self._expert = ENV_POLICY_MAP[self.task]()
        self._renderer = None
        if self.cameras:
            model = self._env.model
            model.vis.quality.offsamples = 0  # no multisampling: must be set before the context exists
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)
            self._renderer = mujoco.Renderer(model, image_size, image_size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            # Free the GL context while EGL is still up, also for environments never closed (those
            # cached by worker processes): left to interpreter teardown, it raises. A hook of its own,
            # registered now, runs before EGL's teardown (registered when mujoco was imported; atexit
            # runs the last registered first), which weakref.finalize's one shared hook does not
            # ensure once anything earlier in the process made a finalizer.
            atexit.register(_close_renderer_if_alive, weakref.ref(self._renderer))
        spaces = {
            f"image_{name}": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8) for name in self.cameras
        }
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32)
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._state_39 = None
        self._num_steps = 0

    def render_cameras(self) -> dict[str, np.ndarray]:
        """{"image_<name>": uint8[S, S, 3]} of every camera, in the current state."""
        images = {}
        for name, camera in self.cameras.items():
            self._renderer.update_scene(self._env.data, camera=camera)
            image = self._renderer.render()
            images[f"image_{name}"] = np.ascontiguousarray(image[::-1] if camera in UPSIDE_DOWN_CAMERAS else image)
        return images

    def _observation(self, state_39: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "proprio": state_39[:PROPRIO_DIM].astype(np.float32),
            "state": state_39.astype(np.float32),
            **self.render_cameras(),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        variation = int(self.np_random.integers(len(self.variations)))
        self._env.set_task(self.variations[variation])
        state_39, _ = self._env.reset(seed=seed)
        self._state_39 = state_39
        self._num_steps = 0
        return self._observation(state_39), {"task": self.task, "variation": variation}

    def step(self, action: np.ndarray):
        action_4 = np.asarray(action, np.float32).reshape(ACTION_DIM)
        state_39, reward, _, _, info = self._env.step(np.clip(action_4, -1.0, 1.0))
        self._state_39 = state_39
        self._num_steps += 1
        success = bool(info["success"])
        truncated = self._num_steps >= self.max_episode_steps and not success
        info = {"success": success, "task": self.task}
        return self._observation(state_39), float(reward), success, truncated, info

    @property
    def num_steps(self) -> int:
        """Steps taken since the last reset."""
        return self._num_steps

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state."""
        return np.asarray(self._expert.get_action(self._state_39), np.float32)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
