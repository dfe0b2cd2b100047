import pytest
import torch

from unigrpo import ops
from unigrpo.shapes.model import ShapesConfig, ShapesModel
from unigrpo.rewards import RewardError, WeightedRewards
from unigrpo.shapes.task import verifier_reward
from unigrpo.rollout import RolloutConfig, denoise, draw_noise, generate_episodes
from unigrpo.shapes import make_split

PROMPTS = ["a red circle", "two squares the color of grass", "a blue triangle left of a yellow circle"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    cfg = ShapesConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=48, timestep_embed_dim=16)
    m = ShapesModel(cfg)
    torch.nn.init.normal_(m.velocity_head.weight, std=0.2)  # the real init is zero: v would not depend on x
    return m.eval()


def _count_reward(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3)) / 255.0


def _rollout(policy, cfg=None, seed=0, rewards=None, prompts=PROMPTS):
    cfg = cfg or RolloutConfig(num_generations=3, max_reasoning_tokens=12, num_inference_steps=4)
    rewards = rewards or WeightedRewards([("brightness", _count_reward, 1.0)])
    return generate_episodes(policy, prompts, list(prompts), rewards, cfg, torch.Generator().manual_seed(seed))


def test_groups_every_prompt_g_episodes_in_order(policy):
    b = _rollout(policy)
    assert len(b) == 9
    assert b.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b.prompts == [p for p in PROMPTS for _ in range(3)]
    assert b.latents.shape == (9, 1, 5, *policy.latent_shape) and b.step_logprobs.shape == (9, 1, 4)
    assert b.max_rounds == 1 and b.rounds_used.tolist() == [1] * 9 and b.image_present.all()
    assert b.images.shape == (9, 32, 32, 3) and b.images.dtype == torch.uint8
    assert b.rewards.shape == (9,) and set(b.reward_components) == {"brightness"}


def test_length_limit_flags_and_masks(policy):
    cfg = RolloutConfig(num_generations=2, max_reasoning_tokens=3, num_inference_steps=2)
    b = _rollout(policy, cfg)
    assert b.reasoning_ids.shape[1] <= 3
    stop = policy.stop_token_ids
    for i in range(len(b)):
        m = b.reasoning_mask[i]
        ids = b.reasoning_ids[i][m]
        stopped = bool(torch.isin(ids, torch.tensor(stop)).any())
        assert bool(b.truncated[i]) == (not stopped)  # truncated exactly when no stop token came
        assert bool((b.reasoning_logprobs[i][~m] == 0).all())
        n = int(m.sum())
        assert bool(m[:n].all()) and not bool(m[n:].any())  # real tokens first, then padding


def test_seeded_rollouts_repeat_exactly(policy):
    a, b = _rollout(policy, seed=3), _rollout(policy, seed=3)
    for name in ("reasoning_ids", "reasoning_logprobs", "latents", "step_logprobs", "images", "rewards"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = _rollout(policy, seed=4)
    assert not torch.equal(a.latents, c.latents)


@pytest.mark.parametrize("sde_window_only", [False, True])
def test_recorded_logprobs_equal_training_recomputation(policy, sde_window_only):
    """The invariant: ratio == 1 at the first update, for text and image, in one batch."""
    b = _rollout(policy, RolloutConfig(num_generations=2, max_reasoning_tokens=10, num_inference_steps=5,
                                      temperature=0.8, sde_window_only=sde_window_only))
    ids, mask = b.ids, b.mask
    assert torch.equal(ids[:, b.reasoning_start:], b.reasoning_ids) and b.prompt_ids.shape[1] == b.reasoning_start
    lp = policy.token_logprobs(ids, mask, b.temperature, start=b.reasoning_start)
    m = b.reasoning_mask
    text_ratio = torch.exp(lp[m] - b.reasoning_logprobs[m])
    assert torch.allclose(text_ratio, torch.ones_like(text_ratio), atol=1e-5)

    ctx = policy.image_context(ids, mask)
    for k in range(b.num_steps):
        sig = b.sigmas[k].expand(len(b))
        v = policy.velocity(b.latents[:, 0, k], sig, ctx)
        if not b.train_steps[:, 0, k].any():
            continue  # a deterministic step (sde_window_only): never trained
        lp_k = ops.sde_step_logprob(b.latents[:, 0, k], b.latents[:, 0, k + 1], v, sig,
                                    b.sigmas[k + 1].expand(len(b)), b.noise_level)
        ratio = torch.exp(lp_k - b.step_logprobs[:, 0, k])
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), k


class ToyField:
    """A policy with a known constant velocity field, to test the sampler's statistics."""

    latent_shape = (4000,)
    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def velocity(self, x, sigma, ctx):
        self.calls += 1
        return torch.full_like(x, 0.5)


def test_sde_step_has_the_stated_mean_and_std():
    toy = ToyField()
    sig = torch.tensor([0.8, 0.5])
    a = 0.7
    x1, eps = draw_noise(toy, 64, 1, a, torch.Generator().manual_seed(0))
    x1 = torch.full_like(x1, 0.3)
    traj = denoise(toy, None, sig, a, x1, eps)
    cx, cv, std, _ = ops.sde_coefficients(sig[:1], sig[1:], a)
    x_next = traj.latents[:, 1]
    expect_mean = cx * 0.3 + cv * 0.5
    n = x_next.numel()
    # mean within 5 standard errors; std within 5 standard errors of the sample std (~ std / sqrt(2n))
    assert abs(x_next.mean().item() - expect_mean.item()) < 5 * std.item() / n**0.5
    assert abs(x_next.std().item() - std.item()) < 5 * std.item() / (2 * n) ** 0.5


def test_no_cfg_is_one_model_call_per_step_and_cfg_two():
    toy = ToyField()
    sig = torch.linspace(1, 0, 7)
    x1, eps = draw_noise(toy, 2, 6, 0.7, torch.Generator().manual_seed(0))
    traj = denoise(toy, "ctx", sig, 0.7, x1, eps)
    assert toy.calls == 6 == traj.model_calls
    toy.calls = 0
    traj = denoise(toy, "ctx", sig, 0.7, x1, eps, uncond="empty", guidance_scale=4.0)
    assert toy.calls == 12 == traj.model_calls


def test_cfg_rollout_runs(policy):
    b = _rollout(policy, RolloutConfig(num_generations=1, max_reasoning_tokens=4, num_inference_steps=2,
                                      guidance_scale=3.0))
    assert b.guidance_scale == 3.0 and torch.isfinite(b.step_logprobs).all()


def test_sde_window_only_is_deterministic_after_the_window():
    """sde_steps=2 of 5: steps 0-1 add noise, steps 2-4 are exact Euler steps with log-prob 0."""
    toy = ToyField()
    sig = torch.linspace(1, 0, 6)
    x1, eps = draw_noise(toy, 3, 5, 0.7, torch.Generator().manual_seed(0))
    traj = denoise(toy, None, sig, 0.7, x1, eps, sde_steps=2)
    full = denoise(toy, None, sig, 0.7, x1, eps)
    assert torch.equal(traj.latents[:, :3], full.latents[:, :3])  # the window is the plain SDE rollout
    for k in range(2, 5):
        euler = traj.latents[:, k] + 0.5 * (sig[k + 1] - sig[k])
        assert torch.allclose(traj.latents[:, k + 1], euler, atol=1e-6), k
    assert (traj.step_logprobs[:, 2:] == 0).all() and (traj.step_logprobs[:, :2] != 0).all()
    assert traj.model_calls == 5


def test_share_initial_noise_within_groups(policy):
    b = _rollout(policy, RolloutConfig(num_generations=3, max_reasoning_tokens=4, num_inference_steps=2,
                                      share_initial_noise=True))
    x1 = b.latents[:, 0, 0].reshape(len(PROMPTS), 3, -1)
    assert torch.equal(x1[:, 0], x1[:, 1]) and torch.equal(x1[:, 0], x1[:, 2])
    assert not torch.equal(x1[0, 0], x1[1, 0])
    assert not torch.equal(b.latents[0, 0, 1], b.latents[1, 0, 1])  # the step noise is still per episode


def test_ode_sampling_shares_the_loop():
    toy = ToyField()
    sig = torch.linspace(1, 0, 5)
    x1, eps = draw_noise(toy, 2, 4, 0.0, None)
    assert eps is None
    traj = denoise(toy, None, sig, 0.0, x1, None)
    assert traj.step_logprobs is None
    assert torch.allclose(traj.latents[:, -1], x1 - 0.5, atol=1e-6)  # Euler with v = 0.5 over sigma 1 -> 0


def test_reward_errors_name_the_prompt(policy):
    def nan_for_grass(images, prompts, metadata):
        return torch.tensor([float("nan") if "grass" in p else 1.0 for p in prompts])

    with pytest.raises(RewardError, match="'nan_r' returned nan for prompt 'two squares the color of grass'"):
        _rollout(policy, rewards=WeightedRewards([("nan_r", nan_for_grass, 1.0)]))
    with pytest.raises(RewardError, match=r"returned shape \(2,\), expected \(9,\)"):
        _rollout(policy, rewards=WeightedRewards([("short", lambda i, p, m: torch.zeros(2), 1.0)]))

    def boom(images, prompts, metadata):
        raise KeyError("missing")

    with pytest.raises(RewardError, match="'boom' raised KeyError"):
        _rollout(policy, rewards=WeightedRewards([("boom", boom, 1.0)]))


def test_weighted_rewards_combine_and_keep_components(policy):
    split = make_split(0)
    prompts = split.heldout[:2]
    rewards = WeightedRewards([("strict", verifier_reward("strict"), 1.0), ("shaped", verifier_reward("shaped"), 0.5)])
    cfg = RolloutConfig(num_generations=2, max_reasoning_tokens=6, num_inference_steps=2)
    b = generate_episodes(policy, [p.text for p in prompts], prompts, rewards, cfg, torch.Generator().manual_seed(0))
    c = b.reward_components
    assert torch.allclose(b.rewards, c["strict"] + 0.5 * c["shaped"])


def test_batch_select_to_and_minibatches(policy):
    b = _rollout(policy)
    sub = b.select(torch.tensor([4, 0]))
    assert sub.prompts == [PROMPTS[1], PROMPTS[0]] and torch.equal(sub.latents[1], b.latents[0])
    assert torch.equal(sub.sigmas, b.sigmas)
    seen = torch.cat([mb.group_ids for mb in b.minibatches(4, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == sorted(b.group_ids.tolist())
    assert b.to("cpu").latents.device.type == "cpu"
    with pytest.raises(IndexError):
        b.select([9])


def test_config_is_validated(policy):
    with pytest.raises(ValueError, match="num_generations"):
        _rollout(policy, RolloutConfig(num_generations=0))
    with pytest.raises(ValueError, match="timestep_fraction"):
        _rollout(policy, RolloutConfig(timestep_fraction=0.0))
    with pytest.raises(ValueError, match="sde_window_only"):
        _rollout(policy, RolloutConfig(sde_window_only=True, timestep_window="random"))


def test_timestep_fraction_windows():
    from unigrpo.rollout import train_step_mask

    early = train_step_mask(3, 10, RolloutConfig(timestep_fraction=0.3), None)
    assert early[:, :3].all() and not early[:, 3:].any()
    rnd = train_step_mask(3, 10, RolloutConfig(timestep_fraction=0.3, timestep_window="random"),
                          torch.Generator().manual_seed(0))
    assert rnd.sum(1).tolist() == [3, 3, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sde_window_only", [False, True])
def test_cuda_graph_replay_equals_eager(policy, sde_window_only):
    gpu = policy.to("cuda")
    cfg = RolloutConfig(num_generations=2, max_reasoning_tokens=6, num_inference_steps=4,
                        sde_window_only=sde_window_only)
    eager = generate_episodes(gpu, PROMPTS, PROMPTS, WeightedRewards([("b", _count_reward, 1.0)]),
                            RolloutConfig(**{**cfg.__dict__, "use_cuda_graph": False}),
                            torch.Generator("cuda").manual_seed(0))
    graphed = generate_episodes(gpu, PROMPTS, PROMPTS, WeightedRewards([("b", _count_reward, 1.0)]), cfg,
                              torch.Generator("cuda").manual_seed(0))
    assert torch.equal(eager.latents, graphed.latents)
    assert torch.equal(eager.step_logprobs, graphed.step_logprobs)
    policy.to("cpu")
