"""What a policy reuses between the control steps of one episode.

    cache = model.episode_cache(task)       # at the episode start: the task's keys and values
    actions_BHA = model.sample_actions(observation, task, rng=rng, cache=cache)   # every step

Within an episode the task tokens never change, and as the window slides by one step the frames
before the newest were seen by earlier calls. The cache holds the task's keys and values at every
layer and, for each frame the policy has seen, its entry (its observation tokens, or with
`model.transformer.history="readout"` its keys and values at every layer), indexed by the frame's
timestep (`observation["timestep"]`, the environment step), not by its slot in the window: a
frame keeps its entry as it moves from the last slot towards the first. Each call then encodes only
the frames the cache lacks, and the denoising steps of the head run on the readout alone.

Entries are trusted by timestep: one cache per episode (`CheckpointPolicy.reset` makes it), and a
window whose timesteps do not come from one episode's environment steps must not use it. Padded
slots (before the episode start) are never cached. Only the from-scratch family has a cache; a
VLA's prefix holds the current images, so `episode_cache` returns None for it.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class EpisodeCache:
    task: Mapping  # the task the cache was made for (a task batch of `create_tasks`)
    context: Any  # the network's `encode_task` of it
    frames: dict = dataclasses.field(default_factory=dict)  # (timestep per example, ...) -> entry

    def frame_keys(self, observation: Mapping) -> list[tuple | None]:
        """Per slot of the window: the key of its frame (its timestep in every example), or None
        where a slot is padding in some example (never cached)."""
        timestep_BT = np.asarray(observation["timestep"])
        real_BT = np.asarray(observation["timestep_pad_mask"], bool)
        return [
            tuple(int(step) for step in timestep_BT[:, t]) if real_BT[:, t].all() else None
            for t in range(timestep_BT.shape[1])
        ]

    def split(self, observation: Mapping) -> tuple[list, Mapping, list[tuple | None]]:
        """(the cached entries of the window's first slots, oldest first; the observation of the
        remaining slots, which the model must encode; their keys). The last slot is always encoded."""
        keys = self.frame_keys(observation)
        num_cached = 0
        while num_cached < len(keys) - 1 and keys[num_cached] in self.frames:
            num_cached += 1
        entries = [self.frames[key] for key in keys[:num_cached]]
        new_observation = jax.tree.map(lambda x: x[:, num_cached:], dict(observation))
        return entries, new_observation, keys[num_cached:]

    def keep(self, window_keys: list, new_keys: list, new_entries: list) -> None:
        """Stores the new frames' entries and forgets frames that left the window."""
        self.frames = {key: self.frames[key] for key in window_keys if key in self.frames}
        self.frames.update({key: entry for key, entry in zip(new_keys, new_entries) if key is not None})
