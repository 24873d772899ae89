"""The registry of `model.vla.action.kind`: every way this codebase joins the backbone to actions,
each a class behind `actions.VLAActions` (the network dispatches through it, never on the name)."""

from octo_like.model.vla.actions import BinActions, FASTActions, FlowActions, VLAActions
from octo_like.model.vla.bridges import PoolBridgeActions, TokenBridgeActions
from octo_like.model.vla.cross_expert import CrossBridgeActions
from octo_like.model.vla.parallel import ParallelBinActions, ParallelL1Actions

VLA_ACTIONS: dict[str, type[VLAActions]] = {
    "bins": BinActions,  # single system, autoregressive: RT-2 / OpenVLA (Jacobi decoding: PD-VLA)
    "fast": FASTActions,  # single system, autoregressive: pi0-FAST
    "parallel_l1": ParallelL1Actions,  # single system, parallel: OpenVLA-OFT, L1 regression
    "parallel_bins": ParallelBinActions,  # single system, parallel: OpenVLA-OFT, bins
    "token_bridge": TokenBridgeActions,  # dual system, special-token bridge: CogACT
    "pool_bridge": PoolBridgeActions,  # dual system, feature-pooling bridge: DexVLA
    "cross_bridge": CrossBridgeActions,  # dual system, cross-attention bridge: SmolVLA, GR00T N1
    "flow": FlowActions,  # dual system, joint attention: pi0, pi0.5 (adaRMS; knowledge insulation)
}
