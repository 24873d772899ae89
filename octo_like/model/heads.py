"""Action heads: read one readout group, predict a chunk of actions, score a chunk for training.

Axis legend: B batch, T window (timesteps), N tokens, C token width, H action horizon (chunk),
A action dim, K bins, D = H * A (a chunk flattened for the MLPs).

Every head mean-pools the readout tokens of each timestep (as Octo) into embeddings [B, T, C] and
exposes the same three methods, so the policy and the trainer treat them alike:

    __call__(readout, *, train)          cheap; `module.init` on it creates every parameter
    loss(readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT, *, rng, train)
                                         -> (scalar loss, {"loss": ..., ...})
    predict_action(readout, *, rng, train=False, **sampling)
                                         -> actions_BTHA, normalized (the policy takes the last T)

A loss averages over valid entries only: action_pad_mask (False past the episode end and on padded
action dims) and timestep_pad_mask, broadcast. Every head gets an explicit `rng` (its dropout key
included), so the trainer needs no `rngs=` for the heads. The sampling heads run their denoising
loop under `jax.lax.scan` (flow matching through flow_matching.euler_sample), calling an unbound
copy of the network with an explicit dropout key per step.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from octo_like.model.binning import bin_center, bin_index
from octo_like.model.flow_matching import (
    PI0_TIME_BETA,
    euler_sample,
    flow_matching_error,
    sample_flow_time,
    sincos_embedding,
)
from octo_like.model.tokens import TokenGroup
from octo_like.utils import spec
from octo_like.utils.errors import InputError


def pool_readout(readout: TokenGroup) -> jax.Array:
    """Mean of the existing readout tokens of each timestep: tokens [B, T, N, C] -> [B, T, C]."""
    tokens_BTNC, mask_BTN = readout.tokens, readout.mask
    if tokens_BTNC.ndim != 4 or mask_BTN.shape != tokens_BTNC.shape[:3]:
        raise InputError(
            f"readout tokens {tuple(tokens_BTNC.shape)} with mask {tuple(mask_BTN.shape)}; "
            "expected tokens [B, T, N, C] with mask [B, T, N]"
        )
    weights_BTN1 = mask_BTN[..., None].astype(tokens_BTNC.dtype)
    # A timestep whose readouts are all masked pools to zeros, not NaN (its loss is masked anyway).
    count_BT1 = jnp.maximum(weights_BTN1.sum(axis=2), 1)
    return (tokens_BTNC * weights_BTN1).sum(axis=2) / count_BT1


def masked_mean(values_BTHA: jax.Array, valid_BTHA: jax.Array) -> jax.Array:
    """Mean of `values` over valid entries; 0 when none is valid (an all-padding batch stays finite)."""
    total = jnp.where(valid_BTHA, values_BTHA, 0).sum()
    return total / jnp.maximum(valid_BTHA.sum(), 1)


class ActionHead(nn.Module):
    """Fields shared by every head; subclasses add the three methods of the module docstring."""

    action_horizon: int
    action_dim: int
    readout_key: str = "readout_action"  # the readout group the policy hands to this head

    def _valid_mask(self, readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT) -> jax.Array:
        """The loss mask [B, T, H, A], after checking every shape against the readout and the head."""
        B, T = readout.tokens.shape[:2]
        expected = (B, T, self.action_horizon, self.action_dim)
        for name, array, shape in (
            ("actions", actions_BTHA, expected),
            ("action_pad_mask", action_pad_mask_BTHA, expected),
            ("timestep_pad_mask", timestep_pad_mask_BT, (B, T)),
        ):
            if tuple(array.shape) != shape:
                raise InputError(
                    f"{name} has shape {tuple(array.shape)}; expected {shape} (B, T of the readout, H, A of the head)"
                )
        return action_pad_mask_BTHA.astype(bool) & timestep_pad_mask_BT.astype(bool)[:, :, None, None]

    def _chunks(self, flat_BTD: jax.Array) -> jax.Array:
        return flat_BTD.reshape(*flat_BTD.shape[:2], self.action_horizon, self.action_dim)


class ContinuousActionHead(ActionHead):
    """Regresses the chunk from the pooled readout (Octo's L1 head; OTTER, OpenVLA-OFT)."""

    loss_type: str = "l1"  # "l1" | "mse"
    max_action: float = 5.0

    def setup(self):
        if self.loss_type not in ("l1", "mse"):
            raise InputError(f"loss_type '{self.loss_type}'; expected 'l1' or 'mse'")
        self.proj = nn.Dense(self.action_horizon * self.action_dim)

    def __call__(self, readout: TokenGroup, *, train: bool) -> jax.Array:
        del train  # no dropout here; the argument keeps the heads' interface uniform
        raw_BTD = self.proj(pool_readout(readout))
        # Soft clip: tanh keeps gradients alive where a hard clip at max_action would cut them.
        return self._chunks(self.max_action * jnp.tanh(raw_BTD / self.max_action))

    def loss(self, readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT, *, rng, train):
        del rng  # deterministic head
        valid_BTHA = self._valid_mask(readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT)
        error_BTHA = self(readout, train=train) - actions_BTHA
        metrics = {
            "mse": masked_mean(jnp.square(error_BTHA), valid_BTHA),
            "l1": masked_mean(jnp.abs(error_BTHA), valid_BTHA),
        }
        metrics["loss"] = metrics[self.loss_type]
        return metrics["loss"], metrics

    def predict_action(self, readout: TokenGroup, *, rng, train: bool = False) -> jax.Array:
        del rng  # deterministic head; the argument keeps the heads' interface uniform
        return self(readout, train=train)


class DiscreteActionHead(ActionHead):
    """Classifies every action entry into uniform bins (Octo's discrete head; RT-2 / OpenVLA binning)."""

    n_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def setup(self):
        if self.n_bins < 2 or not self.low < self.high:
            raise InputError(
                f"n_bins={self.n_bins}, low={self.low}, high={self.high}; expected n_bins >= 2 and low < high"
            )
        self.logits_proj = nn.Dense(self.action_horizon * self.action_dim * self.n_bins)

    def __call__(self, readout: TokenGroup, *, train: bool) -> jax.Array:
        """Logits [B, T, H, A, K]."""
        del train  # no dropout here; the argument keeps the heads' interface uniform
        logits_BTD = self.logits_proj(pool_readout(readout))
        return logits_BTD.reshape(*logits_BTD.shape[:2], self.action_horizon, self.action_dim, self.n_bins)

    def loss(self, readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT, *, rng, train):
        del rng  # deterministic head
        valid_BTHA = self._valid_mask(readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT)
        logits_BTHAK = self(readout, train=train)
        labels_BTHA = bin_index(actions_BTHA, self.low, self.high, self.n_bins)
        cross_entropy_BTHA = optax.softmax_cross_entropy_with_integer_labels(logits_BTHAK, labels_BTHA)
        greedy_BTHA = logits_BTHAK.argmax(axis=-1)
        error_BTHA = self._centers(greedy_BTHA) - actions_BTHA
        metrics = {
            "loss": masked_mean(cross_entropy_BTHA, valid_BTHA),
            "accuracy": masked_mean(greedy_BTHA == labels_BTHA, valid_BTHA),
            "mse": masked_mean(jnp.square(error_BTHA), valid_BTHA),
        }
        return metrics["loss"], metrics

    def predict_action(self, readout: TokenGroup, *, rng, train: bool = False, temperature: float = 0.0) -> jax.Array:
        """Bin centers of the argmax (temperature 0) or of bins sampled from softmax(logits / temperature)."""
        if temperature < 0:
            raise InputError(f"temperature={temperature}; expected >= 0 (0 is greedy)")
        logits_BTHAK = self(readout, train=train)
        if temperature == 0:
            bins_BTHA = logits_BTHAK.argmax(axis=-1)
        else:
            bins_BTHA = jax.random.categorical(rng, logits_BTHAK / temperature)
        return self._centers(bins_BTHA)

    def _centers(self, bins_BTHA: jax.Array) -> jax.Array:
        return bin_center(bins_BTHA, self.low, self.high, self.n_bins)


class MLPResNetBlock(nn.Module):
    features: int
    dropout_rate: float
    use_layer_norm: bool

    @nn.compact
    def __call__(self, x, *, train: bool, rng):
        residual = x
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x, rng=rng)
        if self.use_layer_norm:
            x = nn.LayerNorm()(x)
        x = nn.Dense(self.features * 4)(x)
        x = nn.Dense(self.features)(nn.swish(x))
        return residual + x


class DenoisingNetwork(nn.Module):
    """Octo's score network: MLP-ResNet over [time features, readout embedding, noisy chunk]."""

    out_dim: int
    hidden_dim: int
    num_blocks: int
    dropout_rate: float
    use_layer_norm: bool
    time_dim: int

    @nn.compact
    def __call__(self, embeddings_BTC, noisy_BTD, time_BT1, *, train: bool, rng=None):
        """`rng` is the dropout key; None (with train) falls back to the "dropout" rng stream."""
        time_BTF = sincos_embedding(time_BT1, self.time_dim)
        time_BTF = nn.Dense(self.time_dim)(nn.swish(nn.Dense(2 * self.time_dim)(time_BTF)))
        x = nn.Dense(self.hidden_dim)(jnp.concatenate([time_BTF, embeddings_BTC, noisy_BTD], axis=-1))
        for i in range(self.num_blocks):
            block_rng = None if rng is None else jax.random.fold_in(rng, i)
            x = MLPResNetBlock(self.hidden_dim, self.dropout_rate, self.use_layer_norm)(x, train=train, rng=block_rng)
        return nn.Dense(self.out_dim)(nn.swish(x))


class _DenoisingHead(ActionHead):
    """What the diffusion and flow-matching heads share: the network and how it is called."""

    hidden_dim: int = 256
    num_blocks: int = 3
    dropout_rate: float = 0.1
    use_layer_norm: bool = True
    time_dim: int = 32

    def setup(self):
        self.network = DenoisingNetwork(
            out_dim=self.action_horizon * self.action_dim,
            hidden_dim=self.hidden_dim,
            num_blocks=self.num_blocks,
            dropout_rate=self.dropout_rate,
            use_layer_norm=self.use_layer_norm,
            time_dim=self.time_dim,
        )

    def _network_time(self, time_BT1: jax.Array) -> jax.Array:
        """The head's time, mapped to [0, 1] for the network's time features."""
        return time_BT1

    def __call__(self, readout: TokenGroup, *, train: bool, time_BT1=None, noisy_actions_BTHA=None, rng=None):
        """The network's output [B, T, H, A] at `time` for `noisy_actions`.

        Both default to zeros, which is all `init` needs; `rng` is the dropout key (see DenoisingNetwork).
        """
        embeddings_BTC = pool_readout(readout)
        B, T = embeddings_BTC.shape[:2]
        time_BT1 = jnp.zeros((B, T, 1)) if time_BT1 is None else time_BT1
        if noisy_actions_BTHA is None:
            noisy_actions_BTHA = jnp.zeros((B, T, self.action_horizon, self.action_dim))
        out_BTD = self.network(
            embeddings_BTC, noisy_actions_BTHA.reshape(B, T, -1), self._network_time(time_BT1), train=train, rng=rng
        )
        return self._chunks(out_BTD)

    def _scan_network(self, readout: TokenGroup, train: bool):
        """(embeddings, f) where f(noisy_BTD, network_time_BT1, rng) runs the network inside `jax.lax.scan`."""
        network, variables = self.network.unbind()

        def run(noisy_BTD, time_BT1, rng):
            return network.apply(variables, embeddings_BTC, noisy_BTD, time_BT1, train=train, rng=rng)

        embeddings_BTC = pool_readout(readout)
        return embeddings_BTC, run

    def _clean_targets(self, readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT):
        """(valid mask, targets with zeros at masked entries).

        The network sees the whole noisy chunk, so masked targets would leak into the prediction of
        valid entries through the noisy input; zeroing them (the normalized mean) makes the loss
        independent of whatever padding holds.
        """
        valid_BTHA = self._valid_mask(readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT)
        return valid_BTHA, jnp.where(valid_BTHA, actions_BTHA, 0)


def cosine_beta_schedule(steps: int, s: float = 0.008) -> np.ndarray:
    """Betas of the cosine noise schedule (Nichol & Dhariwal 2021), clipped at 0.999 as there."""
    t = np.linspace(0, steps, steps + 1) / steps
    alpha_hats = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    alpha_hats = alpha_hats / alpha_hats[0]
    return np.clip(1 - alpha_hats[1:] / alpha_hats[:-1], 0, 0.999)


class DiffusionActionHead(_DenoisingHead):
    """DDPM over the chunk (Octo's diffusion head): epsilon prediction, cosine schedule, clipped x0.

    `time` of `__call__` is the diffusion step (0 = least noise .. diffusion_steps - 1). Sampling:
    "ddpm" runs ancestral sampling over every step (posterior variance "fixed small"); "ddim" runs
    the deterministic DDIM (eta = 0) over `num_inference_steps` evenly spaced steps (every step when
    it equals diffusion_steps). Both clip the predicted clean chunk to [-max_action, max_action] at
    every step.
    """

    diffusion_steps: int = 20
    num_inference_steps: int | None = None  # None: diffusion_steps
    sampler: str = "ddpm"  # "ddpm" | "ddim"
    max_action: float = 5.0

    def _network_time(self, time_BT1: jax.Array) -> jax.Array:
        return time_BT1 / self.diffusion_steps

    def _alpha_hats(self) -> np.ndarray:
        return np.cumprod(1 - cosine_beta_schedule(self.diffusion_steps))

    def loss(self, readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT, *, rng, train):
        valid_BTHA, actions_BTHA = self._clean_targets(
            readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT
        )
        time_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
        B, T = actions_BTHA.shape[:2]
        time_BT1 = jax.random.randint(time_rng, (B, T, 1), 0, self.diffusion_steps)
        alpha_hat_BT11 = jnp.asarray(self._alpha_hats(), jnp.float32)[time_BT1][..., None]
        noise_BTHA = jax.random.normal(noise_rng, actions_BTHA.shape)
        noisy_BTHA = jnp.sqrt(alpha_hat_BT11) * actions_BTHA + jnp.sqrt(1 - alpha_hat_BT11) * noise_BTHA
        eps_BTHA = self(readout, train=train, time_BT1=time_BT1, noisy_actions_BTHA=noisy_BTHA, rng=dropout_rng)
        loss = masked_mean(jnp.square(eps_BTHA - noise_BTHA), valid_BTHA)
        return loss, {"loss": loss}

    def predict_action(
        self,
        readout: TokenGroup,
        *,
        rng,
        train: bool = False,
        sampler: str | None = None,
        num_inference_steps: int | None = None,
    ) -> jax.Array:
        """Samples chunks; `sampler` and `num_inference_steps` override the fields for this call."""
        sampler = self.sampler if sampler is None else sampler
        steps = next(s for s in (num_inference_steps, self.num_inference_steps, self.diffusion_steps) if s is not None)
        if sampler not in ("ddpm", "ddim"):
            raise InputError(f"sampler '{sampler}'; expected 'ddpm' or 'ddim'")
        if sampler == "ddpm" and steps != self.diffusion_steps:
            raise InputError(
                f"num_inference_steps={steps} with the ddpm sampler; it runs all "
                f"diffusion_steps={self.diffusion_steps} (use sampler 'ddim' for fewer)"
            )
        if not 1 <= steps <= self.diffusion_steps:
            raise InputError(f"num_inference_steps={steps}; expected 1 .. diffusion_steps={self.diffusion_steps}")

        # Steps k * (diffusion_steps // steps) from the highest down to 0 (all of them for ddpm), as
        # diffusers' default "leading" spacing. Fewer steps leave out the top steps: the 0.999-clipped
        # top of the cosine schedule keeps ~1e-5 of the signal, so the clean chunk predicted there is
        # amplified noise (clipped to max_action) that deterministic DDIM carries to the end (on the
        # two-mode toy problem, 5 steps from the top put 94% of samples on one mode). The step after
        # the last is "no noise" (alpha_hat = 1), so the final update returns the clean chunk.
        times = (np.arange(steps)[::-1] * (self.diffusion_steps // steps)).astype(np.int32)
        alpha_hats = self._alpha_hats()
        alpha_hat_t = alpha_hats[times].astype(np.float32)
        alpha_hat_prev = np.append(alpha_hats[times[1:]], 1.0).astype(np.float32)
        embeddings_BTC, network = self._scan_network(readout, train)
        B, T = embeddings_BTC.shape[:2]
        start_rng, loop_rng = jax.random.split(rng)

        def step(noisy_BTD, inputs):
            time, a_t, a_prev, step_rng = inputs
            noise_rng, dropout_rng = jax.random.split(step_rng)
            eps_BTD = network(noisy_BTD, self._network_time(jnp.full((B, T, 1), time)), dropout_rng)
            clean_BTD = (noisy_BTD - jnp.sqrt(1 - a_t) * eps_BTD) / jnp.sqrt(a_t)
            clean_BTD = jnp.clip(clean_BTD, -self.max_action, self.max_action)
            if sampler == "ddim":
                # The noise consistent with the clipped clean chunk, re-noised to the previous level.
                eps_BTD = (noisy_BTD - jnp.sqrt(a_t) * clean_BTD) / jnp.sqrt(1 - a_t)
                return jnp.sqrt(a_prev) * clean_BTD + jnp.sqrt(1 - a_prev) * eps_BTD, None
            # The posterior q(x_prev | x_t, clean) of Ho et al. (2020), eqs. 6-7.
            beta_t = 1 - a_t / a_prev
            clean_coef = jnp.sqrt(a_prev) * beta_t / (1 - a_t)
            noisy_coef = jnp.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)
            mean_BTD = clean_coef * clean_BTD + noisy_coef * noisy_BTD
            std = jnp.sqrt(beta_t * (1 - a_prev) / (1 - a_t))  # 0 at the last step
            return mean_BTD + std * jax.random.normal(noise_rng, noisy_BTD.shape), None

        noisy_BTD = jax.random.normal(start_rng, (B, T, self.action_horizon * self.action_dim))
        inputs = (times, alpha_hat_t, alpha_hat_prev, jax.random.split(loop_rng, steps))
        clean_BTD, _ = jax.lax.scan(step, noisy_BTD, inputs)
        return self._chunks(clean_BTD)


class FlowMatchingActionHead(_DenoisingHead):
    """Flow matching over the chunk (octo_like/model/flow_matching.py, pi0's convention): training
    draws t from Beta(time_beta), sampling runs `num_inference_steps` Euler steps from noise at t = 1.
    `time` of `__call__` is t.
    """

    num_inference_steps: int = 10
    time_beta: tuple[float, float] = PI0_TIME_BETA

    def loss(self, readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT, *, rng, train):
        valid_BTHA, actions_BTHA = self._clean_targets(
            readout, actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT
        )
        time_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
        B, T = actions_BTHA.shape[:2]
        time_BT1 = sample_flow_time(time_rng, (B, T, 1), self.time_beta)
        noise_BTHA = jax.random.normal(noise_rng, actions_BTHA.shape)

        def predict_velocity(noisy_BTHA):
            return self(readout, train=train, time_BT1=time_BT1, noisy_actions_BTHA=noisy_BTHA, rng=dropout_rng)

        error_BTHA = flow_matching_error(predict_velocity, actions_BTHA, noise_BTHA, time_BT1[..., None])
        loss = masked_mean(error_BTHA, valid_BTHA)
        return loss, {"loss": loss}

    def predict_action(
        self, readout: TokenGroup, *, rng, train: bool = False, num_inference_steps: int | None = None
    ) -> jax.Array:
        """Euler-integrates noise at t = 1 to a chunk at t = 0; `num_inference_steps` overrides the field."""
        steps = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        embeddings_BTC, network = self._scan_network(readout, train)
        B, T = embeddings_BTC.shape[:2]
        start_rng, loop_rng = jax.random.split(rng)

        def velocity(noisy_BTD, time, dropout_rng):
            return network(noisy_BTD, self._network_time(jnp.full((B, T, 1), time)), dropout_rng)

        noise_BTD = jax.random.normal(start_rng, (B, T, self.action_horizon * self.action_dim))
        step_rngs = jax.random.split(loop_rng, max(steps, 1))
        return self._chunks(euler_sample(velocity, noise_BTD, steps, step_rngs))


HEADS: dict[str, tuple[type[ActionHead], dict[str, Any]]] = {
    "l1": (ContinuousActionHead, {"loss_type": "l1"}),
    "mse": (ContinuousActionHead, {"loss_type": "mse"}),
    "discrete": (DiscreteActionHead, {}),
    "diffusion": (DiffusionActionHead, {}),
    "flow": (FlowMatchingActionHead, {}),
}


def create_head(name: str, *, action_horizon: int, action_dim: int, **kwargs) -> ActionHead:
    """The head registered as `name`, its defaults updated by `kwargs`."""
    if name not in HEADS:
        raise InputError(f"unknown action head '{name}'; expected one of {sorted(HEADS)}")
    cls, defaults = HEADS[name]
    return cls(action_horizon=action_horizon, action_dim=action_dim, **{**defaults, **kwargs})


def head_spec(name: str, *, action_dim: int, action_horizon: int | None = None, **kwargs) -> dict:
    """The serializable spec (for a config) of the head registered as `name`. Without
    `action_horizon` the head predicts chunks of the data's length (filled in when the model is
    built, octo_like/policy/build.py `with_action_horizon`)."""
    if name not in HEADS:
        raise InputError(f"unknown action head '{name}'; expected one of {sorted(HEADS)}")
    cls, defaults = HEADS[name]
    chunk = {} if action_horizon is None else {"action_horizon": action_horizon}
    return spec.create(cls, action_dim=action_dim, **chunk, **{**defaults, **kwargs})
