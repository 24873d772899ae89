"""Single-system parallel decoding (OpenVLA-OFT): H * A empty action slots, learned embeddings
appended after the prefix and the proprio token, attend the prefix and each other
(bidirectionally) in one forward pass; the prefix never attends them. Their last hidden states
give the whole chunk at once:

- `ParallelL1Actions`: the from-scratch L1 head (octo_like/model/heads.py) regresses the
  continuous chunk from the slots (OFT's L1 regression);
- `ParallelBinActions`: slot i's logits over the bin ids are action entry i (OFT's parallel
  decoding of the RT-2 / OpenVLA bins: the bins model's vocabulary and loss, one forward).

Axis letters: B batch, S action slots (H * A), C backbone width, V vocabulary, H horizon, A action dims.
"""

from typing import ClassVar

import flax.linen as nn
import jax

from octo_like.model.vla.actions import BinActions, VLAActions, query_states, token_cross_entropy
from octo_like.model.vla.bridges import HeadActions, single_readout


def add_action_slots(actions: VLAActions, network: nn.Module) -> None:
    shape = (actions.horizon * actions.action_dim, actions.backbone_config.text.hidden_size)
    network.action_slots = network.param("action_slots", nn.initializers.normal(0.02), shape)


class ParallelL1Actions(HeadActions):
    default_head: ClassVar[dict] = {"name": "l1"}

    def add_modules(self, network):
        super().add_modules(network)
        add_action_slots(self, network)

    def readout(self, network, observation, task):
        layers = self.action["backbone_layers"]
        return single_readout(query_states(network, observation, task, network.action_slots, layers))


class ParallelBinActions(VLAActions):
    sampling_options = frozenset()

    @property
    def bins(self) -> BinActions:
        """The bins model whose vocabulary ids, targets and decoding these slots share."""
        return BinActions(self.action, self.backbone_config)

    def check(self):
        return self.bins.check()

    def add_modules(self, network):
        network.proprio_in = nn.Dense(self.backbone_config.text.hidden_size)
        add_action_slots(self, network)

    def slot_states(self, network, observation, task) -> jax.Array:
        """[B, S, C]: one forward of prefix, proprio token and slots."""
        return query_states(network, observation, task, network.action_slots)

    def init_outputs(self, network, observation, task):
        return network.backbone.language_model.embed_tokens.attend(self.slot_states(network, observation, task))

    def loss(self, network, observation, task, actions_BHA, valid_BHA, rng, train):
        del rng, train  # deterministic; no dropout
        targets_BS, mask_BS = self.bins.targets(actions_BHA, valid_BHA)
        logits_BSV = network.backbone.language_model.embed_tokens.attend(self.slot_states(network, observation, task))
        return token_cross_entropy(logits_BSV, targets_BS, mask_BS)

    def sample(self, network, observation, task, rng):
        del rng  # the most likely bin of every slot
        tokens_BS = self.bins.greedy_action_token(network, self.slot_states(network, observation, task))
        return self.bins.chunks_from_tokens(tokens_BS)
