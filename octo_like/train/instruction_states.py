"""The frozen instruction encoder's output, computed once per distinct instruction.

A from-scratch policy reads its instruction through a frozen encoder (MiniLM, or the CLIP's text
tower). Its output for an instruction never changes while training, a dataset holds few distinct
instructions (a task's paraphrases, the empty instruction of dropped language), and for a small
policy the encoder is about half of a train step's work. `InstructionStates` keeps the encoder's
token states per distinct (input_ids, mask) row, encodes only rows it has not seen (in one call
of the batch's size: one compiled shape), and adds them to the batch as
`task["language_instruction"]["states"]` float32 [B, L, C], which the network reads instead of
running the encoder (octo_like/model/scratch/network.py). Beyond `max_instructions` rows, the
least recently used are forgotten (recomputed if they come back).

Each process encodes its own rows on its first local device, from a host copy of the encoder's
parameters gathered once: no collective runs per batch, so processes may see different rows.
"""

import collections

import jax
import numpy as np
from jax.experimental import multihost_utils

from octo_like.model.scratch.network import CLIP, LANGUAGE_ENCODER
from octo_like.model.scratch.observation_tokenizers import language_mask
from octo_like.policy.model import PolicyModel

DEFAULT_MAX_INSTRUCTIONS = 20_000  # 16 tokens x 384 floats each: about 0.5 GB at most


class InstructionStates:
    def __init__(self, model: PolicyModel, max_instructions: int = DEFAULT_MAX_INSTRUCTIONS):
        module = model.module
        encoder = CLIP if module.language_from_clip else LANGUAGE_ENCODER
        params = model.network_params(model.params)
        # Gathered whole in every process (a collective, once): the per-batch encoding is local.
        encoder_params = multihost_utils.process_allgather({encoder: params[encoder]}, tiled=True)
        device = jax.local_devices()[0]
        self._params = jax.device_put(encoder_params, device)
        # Its own one-device mesh: the encoding runs inside the training loop's mesh context.
        self._mesh = jax.sharding.Mesh(np.array([device]), ("local",))
        self._encode = jax.jit(
            lambda params, ids_BL, mask_BL: module.apply(
                {"params": params}, ids_BL, mask_BL, method=type(module).encode_instructions
            )
        )
        self._states = collections.OrderedDict()  # row bytes -> float32 [L, C], oldest use first
        self.max_instructions = max_instructions
        self.encoded_rows = 0  # rows encoded so far (the rest were reused)

    @staticmethod
    def for_model(model: PolicyModel, max_instructions: int = DEFAULT_MAX_INSTRUCTIONS) -> "InstructionStates | None":
        """The cache of a model with a frozen instruction encoder; None for one without (no
        language, or the VLA family, whose backbone reads the instruction)."""
        module = model.module
        if getattr(module, "language", None) is None and not getattr(module, "language_from_clip", False):
            return None
        return InstructionStates(model, max_instructions)

    def __call__(self, batch: dict) -> dict:
        """`batch` with `task["language_instruction"]["states"]` added."""
        task = batch["task"]
        language = task["language_instruction"]
        ids_BL = np.asarray(language["input_ids"], np.int32)
        mask_BL = np.asarray(language_mask(task), np.int32)  # what the network would encode
        keys = [ids.tobytes() + mask.tobytes() for ids, mask in zip(ids_BL, mask_BL)]
        missing = list(dict.fromkeys(key for key in keys if key not in self._states))
        rows = {key: row for row, key in enumerate(keys)}
        batch_size = len(keys)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            # Padded to the batch's size with its first row: every call has one shape.
            index = [rows[key] for key in chunk] + [0] * (batch_size - len(chunk))
            with jax.set_mesh(self._mesh):
                states_BLC = np.asarray(self._encode(self._params, ids_BL[index], mask_BL[index]), np.float32)
            self._states.update(zip(chunk, states_BLC))
            self.encoded_rows += len(chunk)
        for key in keys:
            self._states.move_to_end(key)
        states_BLC = np.stack([self._states[key] for key in keys])
        while len(self._states) > self.max_instructions:
            self._states.popitem(last=False)
        return {**batch, "task": {**task, "language_instruction": {**language, "states": states_BLC}}}
