"""Multi-round episodes (reason -> draw -> look -> reflect -> redraw): what the rollout
records, the end-of-episode decision, and the invariant of the joint objective — ratio
== 1 at the first update for every turn's tokens and every image's steps."""

import pytest
import torch
from tiny_runs import PROMPTS, brightness, tiny, trainer

from unigrpo import ops
from unigrpo.policy import hidden_token_logprobs
from unigrpo.rewards import WeightedRewards
from unigrpo.rollout import RolloutConfig, generate_episodes
from unigrpo.shapes.model import ShapesModel
from unigrpo.train.losses import episode_states

REWARDS = WeightedRewards([("bright", brightness, 1.0)])


def _policy():
    m = tiny()
    torch.nn.init.normal_(m.velocity_head.weight, std=0.2)  # the real init is zero: v would not depend on x
    return m.eval()


def _rollout(policy, seed=0, **cfg):
    cfg = RolloutConfig(**{"num_generations": 3, "max_reasoning_tokens": 5, "num_inference_steps": 3,
                           "max_rounds": 2, "temperature": 1.5, **cfg})
    return generate_episodes(policy, PROMPTS[:3], PROMPTS[:3], REWARDS, cfg, torch.Generator().manual_seed(seed),
                             keep_noise=True)


class EndsOddRows(ShapesModel):
    """After looking, odd rows end the episode at once and even rows never do."""

    def _steer(self, logits, rows):
        eos = self.special["eos"]
        logits = logits.clone()
        logits[rows % 2 == 1, eos] = 1e4
        logits[rows % 2 == 0, eos] = -1e4
        return logits

    def interleaved_prefill(self, ids, mask, images, max_new_tokens=None):
        logits, state = super().interleaved_prefill(ids, mask, images, max_new_tokens)
        state.rows = torch.arange(ids.shape[0])  # turn 2: every episode is still live, so the batch's rows
        return self._steer(logits, state.rows), state

    def decode_step(self, tokens, active, state):
        logits = super().decode_step(tokens, active, state)
        return self._steer(logits, state.rows) if hasattr(state, "rows") else logits


def test_two_rounds_record_every_turn_and_image():
    policy = _policy()
    b = _rollout(policy)
    n, k = len(b), b.num_steps
    assert b.latents.shape == (n, 2, k + 1, *policy.latent_shape) and b.step_logprobs.shape == (n, 2, k)
    assert b.image_present[:, 0].all() and b.max_rounds == 2
    assert ((b.rounds_used >= 1) & (b.rounds_used <= 2)).all()
    gen = b.reasoning_mask
    for i in range(n):  # each row's turns are contiguous, and image 2 sits where turn 2 ended
        count = int(gen[i].sum())
        assert gen[i, :count].all() and not gen[i, count:].any()
        assert int(b.image_slots[i, 0]) < int(b.image_slots[i, 1]) or not b.image_present[i, 1]
        if b.image_present[i, 1]:
            assert int(b.image_slots[i, 1]) == b.reasoning_start + count
        last = b.rounds_used[i] - 1
        assert torch.equal(policy.latents_to_images(b.latents[i, last, -1][None])[0], b.images[i])
    assert not b.train_steps[~b.image_present].any() and (b.step_logprobs[~b.image_present] == 0).all()


def test_the_policy_decides_to_end_after_looking():
    torch.manual_seed(0)
    policy = EndsOddRows(tiny().config).eval()
    b = _rollout(policy, num_generations=4)
    odd = torch.arange(len(b)) % 2 == 1
    assert b.rounds_used[odd].eq(1).all() and b.rounds_used[~odd].eq(2).all()
    for i in torch.nonzero(odd)[:, 0].tolist():  # turn 2 is the end-of-episode token alone
        tail = b.reasoning_ids[i][b.reasoning_mask[i]]
        assert int(tail[-1]) == policy.special["eos"]
        assert int(b.image_slots[i, 0]) == b.reasoning_start + len(tail) - 1
    assert (b.image_slots[~odd, 1] > b.image_slots[~odd, 0]).all()


def test_single_round_policy_is_refused_a_second_round():
    from toy_policy import ToyPolicy

    with pytest.raises(ValueError, match="rollout.max_rounds = 2 needs a policy that supports interleaved"):
        _rollout(ToyPolicy())


@pytest.mark.parametrize("seed", [0, 1])
def test_recorded_logprobs_equal_training_recomputation_every_turn(seed):
    """The invariant over every turn's tokens and every image's trained steps, from the
    one teacher-forced interleaved pass the loss uses."""
    policy = _policy()
    b = _rollout(policy, seed=seed)
    assert b.image_present[:, 1].any()  # some episodes drew twice
    with torch.no_grad():
        hidden, ctx = episode_states(policy, b)
    lp = hidden_token_logprobs(hidden, policy.lm_head_weight, b.ids, b.mask, b.temperature, b.reasoning_start)
    m = b.reasoning_mask
    assert int(m.sum()) > int(b.image_slots[:, 0].sub(b.reasoning_start).sum())  # tokens after looking too
    torch.testing.assert_close(lp[m], b.reasoning_logprobs[m], rtol=0, atol=1e-5)
    rows, rounds, steps = b.train_steps.nonzero(as_tuple=True)
    assert rounds.eq(1).any()
    x, x_next = b.latents[rows, rounds, steps], b.latents[rows, rounds, steps + 1]
    with torch.no_grad():
        v = policy.velocity(x, b.sigmas[steps], ctx.select(rows * b.max_rounds + rounds))
    logp = ops.sde_step_logprob(x, x_next, v, b.sigmas[steps], b.sigmas[steps + 1], b.noise_level)
    torch.testing.assert_close(logp, b.step_logprobs[rows, rounds, steps], rtol=0, atol=1e-4)


def test_trainer_runs_multi_round_with_ratio_one(tmp_path):
    t = trainer(tmp_path, ["train.iterations=1", "rollout.max_rounds=2", "train.num_inner_epochs=2"])
    m = t.train_iteration()
    assert abs(m["first_minibatch/text_ratio_mean"] - 1) < 1e-5
    assert abs(m["first_minibatch/image_ratio_mean"] - 1) < 1e-5
    assert 1 <= m["rollout/rounds_used"] <= 2
    assert all(torch.isfinite(p).all() for p in t.policy.parameters())


def test_extra_round_cost_is_taken_off_the_reward():
    policy = _policy()
    free, paid = _rollout(policy, seed=2), _rollout(policy, seed=2, extra_round_cost=0.25)
    assert torch.equal(free.rounds_used, paid.rounds_used) and free.image_present[:, 1].any()
    torch.testing.assert_close(paid.rewards, free.rewards - 0.25 * (free.rounds_used - 1).float())


def test_rewards_that_take_the_episode_see_every_image_it_drew():
    torch.manual_seed(0)
    policy = EndsOddRows(tiny().config).eval()
    torch.nn.init.normal_(policy.velocity_head.weight, std=0.2)
    seen = {}

    def first_image(images, prompts, metadata, episode):
        seen["episode"] = episode
        return episode.images[:, 0].float().mean(dim=(1, 2, 3))

    cfg = RolloutConfig(num_generations=4, max_reasoning_tokens=5, num_inference_steps=3, max_rounds=2,
                        temperature=1.5)
    b = generate_episodes(policy, PROMPTS[:3], PROMPTS[:3], WeightedRewards([("first", first_image, 1.0)]), cfg,
                          torch.Generator().manual_seed(2))
    ep = seen["episode"]
    assert torch.equal(ep.present, b.image_present) and torch.equal(ep.present[:, 1], torch.arange(len(b)) % 2 == 0)
    for r in range(2):
        rows = b.image_present[:, r]
        assert torch.equal(ep.images[rows, r], policy.latents_to_images(b.latents[rows, r, -1]))
        assert not ep.images[~rows, r].any()
    last = b.rounds_used - 1
    assert torch.equal(ep.images[torch.arange(len(b)), last], b.images)


def test_evaluation_episodes_pair_round_one_with_single_round_sampling():
    from unigrpo.rollout import sample_episodes, sample_images

    policy = _policy()
    texts = PROMPTS * 2
    kw = dict(steps=3, temperature=1.5, max_new_tokens=5, seed=3, batch_size=4)
    single, _, _ = sample_images(policy, texts, **kw)
    two = sample_episodes(policy, texts, max_rounds=2, **kw)
    again = sample_episodes(policy, texts, max_rounds=2, **kw)
    assert torch.equal(two.round_images[:, 0], single)  # round 1 is the single-round sample
    assert torch.equal(two.images, again.images) and torch.equal(two.rounds_used, again.rounds_used)
    assert two.rounds_used.eq(2).any()
    for i in range(len(texts)):
        assert torch.equal(two.images[i], two.round_images[i, two.rounds_used[i] - 1])
    with pytest.raises(ValueError, match="max_rounds > 1 needs reasoning"):
        sample_episodes(policy, texts, max_rounds=2, reasoning=False, **kw)
