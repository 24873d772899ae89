"""Action heads: shapes, loss masking, binning, samplers, and a two-mode toy problem.

The toy problem is the reason the generative heads exist: with one readout and targets +0.5 or
-0.5 at equal odds, a sampling head must put samples near both modes while regression heads
return a single action between them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from octo_like.model.binning import bin_center, bin_index
from octo_like.model.heads import HEADS, cosine_beta_schedule, create_head
from octo_like.model.tokens import TokenGroup
from octo_like.utils.errors import InputError

B, T, N, C, H, A = 3, 2, 2, 8, 4, 3
TINY_NETWORK = {"hidden_dim": 32, "num_blocks": 1, "time_dim": 16}  # diffusion and flow only


def tiny_head(name: str, action_horizon: int = H, action_dim: int = A, **kwargs):
    if name in ("diffusion", "flow"):
        kwargs = {**TINY_NETWORK, **kwargs}
    return create_head(name, action_horizon=action_horizon, action_dim=action_dim, **kwargs)


def readout_group(batch: int, window: int) -> TokenGroup:
    tokens_BTNC = jax.random.normal(jax.random.key(0), (batch, window, N, C))
    return TokenGroup(tokens_BTNC, jnp.ones((batch, window, N), bool))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shapes_and_masked_loss(name):
    head = tiny_head(name)
    readout = readout_group(B, T)
    params = head.init(jax.random.key(1), readout, train=False)
    actions_BTHA = jax.random.uniform(jax.random.key(2), (B, T, H, A), minval=-0.9, maxval=0.9)
    # Padding of every kind: a padded action dim, steps past the episode end, a padded timestep.
    action_pad_mask_BTHA = np.ones((B, T, H, A), bool)
    action_pad_mask_BTHA[..., -1] = False
    action_pad_mask_BTHA[0, 1, 2:] = False
    timestep_pad_mask_BT = np.ones((B, T), bool)
    timestep_pad_mask_BT[1, 0] = False
    valid_BTHA = action_pad_mask_BTHA & timestep_pad_mask_BT[:, :, None, None]
    perturbed_padding_BTHA = jnp.where(valid_BTHA, actions_BTHA, 0.7 - actions_BTHA)
    perturbed_valid_BTHA = actions_BTHA.at[0, 0, 0, 0].add(0.3)

    @jax.jit
    def losses(params):
        def loss(actions, action_pad_mask, timestep_pad_mask):
            masks = (action_pad_mask, timestep_pad_mask)
            return head.apply(params, readout, actions, *masks, rng=jax.random.key(3), train=True, method="loss")

        return (
            loss(actions_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT),
            loss(perturbed_padding_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT)[0],
            loss(perturbed_valid_BTHA, action_pad_mask_BTHA, timestep_pad_mask_BT)[0],
            loss(actions_BTHA, np.zeros_like(action_pad_mask_BTHA), timestep_pad_mask_BT)[0],
        )

    (loss, metrics), loss_perturbed_padding, loss_perturbed_valid, loss_all_masked = losses(params)
    assert loss.shape == () and np.isfinite(loss) and metrics["loss"] == loss
    assert loss_perturbed_padding == loss
    assert loss_perturbed_valid != loss
    assert np.isfinite(loss_all_masked)

    predict = jax.jit(lambda params, rng: head.apply(params, readout, rng=rng, method="predict_action"))
    actions = predict(params, jax.random.key(4))
    assert actions.shape == (B, T, H, A) and np.isfinite(actions).all()


def test_loss_rejects_mismatched_shapes():
    head = tiny_head("l1")
    readout = readout_group(B, T)
    params = head.init(jax.random.key(0), readout, train=False)
    long_chunk_BTHA = jnp.zeros((B, T, H + 1, A))
    with pytest.raises(InputError, match=r"actions has shape \(3, 2, 5, 3\); expected \(3, 2, 4, 3\)"):
        masks = (long_chunk_BTHA == 0, jnp.ones((B, T), bool))
        head.apply(params, readout, long_chunk_BTHA, *masks, rng=None, train=False, method="loss")
    with pytest.raises(InputError, match="readout tokens"):
        head.apply(params, TokenGroup(jnp.zeros((B, N, C)), jnp.ones((B, N), bool)), train=False)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("huber", {}, "unknown action head 'huber'"),
        ("l1", {"loss_type": "huber"}, "loss_type 'huber'"),
        ("discrete", {"low": 1.0, "high": -1.0}, "low < high"),
    ],
)
def test_bad_head_config(name, kwargs, message):
    with pytest.raises(InputError, match=message):
        head = tiny_head(name, **kwargs)
        head.init(jax.random.key(0), readout_group(B, T), train=False)


def test_diffusion_rejects_bad_sampling_options():
    head = tiny_head("diffusion", diffusion_steps=5)
    readout = readout_group(B, T)
    params = head.init(jax.random.key(0), readout, train=False)
    for options, message in (
        ({"sampler": "ddpm", "num_inference_steps": 3}, "runs all diffusion_steps=5"),
        ({"sampler": "ddim", "num_inference_steps": 6}, "expected 1 .. diffusion_steps=5"),
        ({"sampler": "euler"}, "sampler 'euler'"),
    ):
        with pytest.raises(InputError, match=message):
            head.apply(params, readout, rng=jax.random.key(1), method="predict_action", **options)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_discrete_bins_round_trip(xp):
    low, high, n_bins = -1.0, 1.0, 256
    centers = np.asarray(bin_center(np.arange(n_bins), low, high, n_bins, xp))
    assert centers.shape == (n_bins,) and np.allclose(np.diff(centers), (high - low) / n_bins)
    assert centers[0] == pytest.approx(low + 1 / n_bins) and centers[-1] == pytest.approx(high - 1 / n_bins)
    bins = np.asarray(bin_index(xp.asarray(centers), low, high, n_bins, xp))
    np.testing.assert_array_equal(bins, np.arange(n_bins))
    # The range ends and anything outside land in the end bins.
    ends = bin_index(xp.asarray([-7.0, low, high, 7.0]), low, high, n_bins, xp)
    np.testing.assert_array_equal(ends, [0, 0, 255, 255])


def test_cosine_schedule():
    betas = cosine_beta_schedule(20)
    alpha_hats = np.cumprod(1 - betas)
    assert betas.shape == (20,) and (betas > 0).all() and (betas <= 0.999).all()
    assert (np.diff(alpha_hats) < 0).all() and alpha_hats[0] > 0.99 and alpha_hats[-1] < 1e-3


# The two-mode toy problem ------------------------------------------------------------------------

TOY_BATCH, TOY_SAMPLES = 256, 2048
TOY_READOUT_C = np.random.default_rng(10).standard_normal(C, np.float32)  # one readout for every example


def toy_readout(batch: int) -> TokenGroup:
    return TokenGroup(jnp.broadcast_to(TOY_READOUT_C, (batch, 1, 1, C)), jnp.ones((batch, 1, 1), bool))


def train_toy(head, steps: int, learning_rate: float = 3e-3):
    """Parameters after `steps` Adam steps on batches of +-0.5 targets (one jitted scan)."""
    readout = toy_readout(TOY_BATCH)
    params = head.init(jax.random.key(11), readout, train=False)
    optimizer = optax.adam(learning_rate)
    ones_BTHA, ones_BT = jnp.ones((TOY_BATCH, 1, 1, 1), bool), jnp.ones((TOY_BATCH, 1), bool)

    def step(carry, rng):
        params, opt_state = carry
        target_rng, loss_rng = jax.random.split(rng)
        actions_BTHA = jnp.where(jax.random.bernoulli(target_rng, 0.5, (TOY_BATCH, 1, 1, 1)), 0.5, -0.5)

        def loss(params):
            masks = (ones_BTHA, ones_BT)
            return head.apply(params, readout, actions_BTHA, *masks, rng=loss_rng, train=True, method="loss")

        grads, _ = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @jax.jit
    def train(params, rng):
        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(rng, steps))
        return params

    return train(params, jax.random.key(12))


def sample_toy(head, params, **sampling) -> np.ndarray:
    @jax.jit
    def sample(params, rng):
        return head.apply(params, toy_readout(TOY_SAMPLES), rng=rng, method="predict_action", **sampling)

    return np.asarray(sample(params, jax.random.key(13))).ravel()


def mode_fractions(samples: np.ndarray) -> tuple[float, float]:
    return float(np.mean(np.abs(samples - 0.5) < 0.15)), float(np.mean(np.abs(samples + 0.5) < 0.15))


TOY_STEPS = {"l1": 300, "mse": 300, "discrete": 300, "diffusion": 400, "flow": 400}


@pytest.fixture(scope="module")
def toy_trained():
    """name -> (head, params), each trained once for the whole module."""
    trained = {}
    for name, steps in TOY_STEPS.items():
        head = tiny_head(name, action_horizon=1, action_dim=1)
        trained[name] = head, train_toy(head, steps)
    return trained


@pytest.mark.parametrize(
    ("name", "sampling"),
    [("diffusion", {}), ("diffusion", {"sampler": "ddim", "num_inference_steps": 5}), ("flow", {})],
)
def test_sampling_heads_cover_both_modes(toy_trained, name, sampling):
    head, params = toy_trained[name]
    plus, minus = mode_fractions(sample_toy(head, params, **sampling))
    assert plus >= 0.25 and minus >= 0.25, (plus, minus)


def test_ddim_over_every_diffusion_step(toy_trained):
    # Deterministic DDIM from the top step, where the clipped cosine schedule keeps ~1e-5 of the
    # signal, leans towards one mode (see DiffusionActionHead.predict_action); it still reaches both.
    head, params = toy_trained["diffusion"]
    samples = sample_toy(head, params, sampler="ddim", num_inference_steps=head.diffusion_steps)
    assert np.all(np.abs(samples) <= head.max_action) and min(mode_fractions(samples)) >= 0.1


def test_mse_head_collapses_to_the_mean(toy_trained):
    samples = sample_toy(*toy_trained["mse"])
    assert np.all(samples == samples[0]) and abs(samples[0]) < 0.2


def test_l1_head_collapses_between_the_modes(toy_trained):
    # L1's minimizer here is every point of [-0.5, 0.5] (any median), so where in that interval the
    # head ends depends on its start and on batch noise: it returns one action, not the two modes.
    samples = sample_toy(*toy_trained["l1"])
    assert np.all(samples == samples[0]) and abs(samples[0]) < 0.5


def test_discrete_head_greedy_picks_one_mode_sampling_covers_both(toy_trained):
    head, params = toy_trained["discrete"]
    greedy = sample_toy(head, params)
    assert np.all(greedy == greedy[0]) and max(mode_fractions(greedy)) == 1.0
    plus, minus = mode_fractions(sample_toy(head, params, temperature=1.0))
    assert plus >= 0.25 and minus >= 0.25, (plus, minus)
