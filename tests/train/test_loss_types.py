"""``loss.loss_type``: TRL's names with TRL's meanings, over several micro-batches."""

import pytest
import torch
from tiny_runs import trainer

from unigrpo.train import TokenNorm, aggregate_token_loss
from unigrpo.train.losses import LOSS_TYPES

MAX_TOKENS = 12


def _micro_batches():
    """Three micro-batches of one optimizer step, with different row counts and token counts."""
    g = torch.Generator().manual_seed(0)
    out = []
    for rows, width, keep in ((3, 7, 0.9), (5, 12, 0.4), (2, 4, 1.0)):
        mask = torch.rand(rows, width, generator=g) < keep
        mask[:, 0] = True  # every round has at least its first token
        loss = torch.randn(rows, width, generator=g) * mask
        out.append((loss, mask))
    return out


def _expected(loss_type, mbs):
    """Each definition written out directly, one loop per sum."""
    if loss_type == "dapo":  # every token of the step weighs the same
        total = sum(float(loss[i, j]) for loss, mask in mbs for i in range(mask.shape[0])
                    for j in range(mask.shape[1]) if mask[i, j])
        return total / sum(int(mask.sum()) for _, mask in mbs)
    per_mb = []
    for loss, mask in mbs:
        if loss_type == "bnpo":  # tokens of the micro-batch
            per_mb.append(float(loss[mask].sum()) / int(mask.sum()))
        elif loss_type == "grpo":  # per-sequence mean, then mean over the micro-batch's sequences
            per_mb.append(sum(float(loss[i][mask[i]].mean()) for i in range(mask.shape[0])) / mask.shape[0])
        else:  # dr_grpo: a constant, rows x max_completion_length
            per_mb.append(float(loss[mask].sum()) / (mask.shape[0] * MAX_TOKENS))
    return sum(per_mb) / len(per_mb)  # then averaged over the accumulated micro-batches


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_aggregation_matches_its_definition_over_micro_batches(loss_type):
    mbs = _micro_batches()
    norm = TokenNorm(len(mbs), float(sum(int(m.sum()) for _, m in mbs)), MAX_TOKENS)
    got = sum(float(aggregate_token_loss(loss, mask, loss_type, norm)) for loss, mask in mbs)
    assert got == pytest.approx(_expected(loss_type, mbs), rel=1e-6, abs=1e-7)


def test_the_four_types_differ_where_token_counts_differ():
    mbs = _micro_batches()
    values = {t: _expected(t, mbs) for t in LOSS_TYPES}
    assert len({round(v, 6) for v in values.values()}) == len(LOSS_TYPES), values
    with pytest.raises(ValueError, match="loss_type must be one of"):
        aggregate_token_loss(*mbs[0], "token_mean", TokenNorm())


def _step_gradients(tmp_path, overrides):
    t = trainer(tmp_path, ["train.iterations=1", "loss.train_image=false"] + overrides)
    grads = []
    step = t._step

    def record():
        grads.append({n: p.grad.clone() for n, p in t.policy.named_parameters() if p.grad is not None})
        return step()

    t._step = record
    t.train_iteration()
    assert len(grads) == 1  # 16 rounds: one optimizer step either way
    return grads[0]


@pytest.mark.parametrize("loss_type,same", [("dapo", True), ("bnpo", False)])
def test_accumulated_step_equals_one_big_minibatch_only_for_dapo(tmp_path, loss_type, same):
    """Two accumulated minibatches of 8 rounds against one of 16 (the same rounds, the
    same shuffle): dapo's normaliser counts the tokens of the whole step, bnpo's of
    each minibatch, so only dapo trains the same objective."""
    one = _step_gradients(tmp_path / "one", [f"loss.loss_type={loss_type}", "train.minibatch_size=16"])
    two = _step_gradients(tmp_path / "two", [f"loss.loss_type={loss_type}", "train.minibatch_size=8",
                                             "train.gradient_accumulation_steps=2"])
    assert one.keys() == two.keys()
    close = all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-8) for k in one)
    assert close == same


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_the_fused_text_loss_is_the_composed_one(tmp_path, loss_type):
    # the trainer's text loss (fused_linear_grpo_loss with the aggregation's token weights)
    # against the composition it replaced: log-probs, then grpo_token_loss, then the aggregation
    from tiny_runs import PROMPTS

    from unigrpo import ops
    from unigrpo.policy import hidden_token_logprobs
    from unigrpo.rollout import generate_episodes
    from unigrpo.train.advantages import group_advantages
    from unigrpo.train.losses import text_loss, trained_token_mask

    t = trainer(tmp_path, [f"loss.loss_type={loss_type}", "loss.beta=0.05", "loss.epsilon_high=0.28"])
    batch = generate_episodes(t.policy, PROMPTS, [{}] * 4, t.rewards, t.cfg.rollout, torch.Generator().manual_seed(0))
    adv = group_advantages(batch.rewards, batch.group_ids, "group", 5.0)
    cfg, norm = t.cfg.loss, TokenNorm(accumulation=2, step_tokens=50.0, max_tokens=MAX_TOKENS, minibatch_tokens=20.0)
    params = [p for p in t.policy.parameters() if p.requires_grad]
    hidden = t.policy.text_forward(batch.ids, batch.mask)
    fused, stats = text_loss(t.policy, t.ref, batch, adv, cfg, hidden, norm)
    g_fused = torch.autograd.grad(fused, params, allow_unused=True)

    hidden = t.policy.text_forward(batch.ids, batch.mask)
    start = batch.reasoning_start
    logp = hidden_token_logprobs(hidden, t.policy.lm_head_weight, batch.ids, batch.mask, batch.temperature, start)
    mask = trained_token_mask(batch, cfg)
    ref_logp = t.ref.token_logprobs(batch.ids, batch.mask, batch.temperature, start)
    out = ops.grpo_token_loss(batch.reasoning_logprobs.reshape(-1), adv[:, None].expand_as(logp).reshape(-1),
                              mask.reshape(-1), logp=logp.reshape(-1), eps_low=cfg.epsilon, eps_high=cfg.epsilon_high,
                              ref_logp=ref_logp.reshape(-1), beta=cfg.beta)
    composed = aggregate_token_loss(out.loss.view_as(logp), mask, loss_type, norm)
    g_composed = torch.autograd.grad(composed, params, allow_unused=True)
    torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-7)
    assert stats["text/ratio_mean"] == out.stats["ratio_mean"]
    for a, b in zip(g_fused, g_composed):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_one_reference_pass_serves_the_text_kl_and_the_image_penalty(tmp_path):
    # with loss.beta > 0 the reference's text states (KL) and image contexts (velocity MSE) come
    # from one teacher-forced pass per minibatch; loss and gradients are those of the two
    # separate passes each loss takes when not handed them
    from tiny_runs import PROMPTS

    from unigrpo.rollout import generate_episodes
    from unigrpo.train.advantages import group_advantages
    from unigrpo.train.losses import episode_states, image_loss, joint_loss, text_loss

    t = trainer(tmp_path, ["loss.beta=0.05"])
    batch = generate_episodes(t.policy, PROMPTS, [{}] * 4, t.rewards, t.cfg.rollout, torch.Generator().manual_seed(0))
    adv = group_advantages(batch.rewards, batch.group_ids, "group", 5.0)
    cfg, norm = t.cfg.loss, TokenNorm(accumulation=1, step_tokens=50.0, max_tokens=MAX_TOKENS, minibatch_tokens=50.0)
    params = [p for p in t.policy.parameters() if p.requires_grad]
    passes = []  # the reference's transformer passes over the sequence
    real = t.ref._text_pass
    t.ref._text_pass = lambda *a, **k: passes.append(1) or real(*a, **k)
    joint, _ = joint_loss(t.policy, t.ref, batch, adv, cfg, norm)
    assert len(passes) == 1
    g_joint = torch.autograd.grad(joint, params, allow_unused=True)

    hidden, ctx = episode_states(t.policy, batch)
    lt, _ = text_loss(t.policy, t.ref, batch, adv, cfg, hidden, norm)
    li, reg, _ = image_loss(t.policy, t.ref, batch, adv, cfg, ctx)
    assert len(passes) == 3  # each loss alone runs its own
    apart = lt + cfg.lambda_img * li + cfg.beta_v * reg
    torch.testing.assert_close(joint, apart, rtol=1e-5, atol=1e-7)
    for a, b in zip(g_joint, torch.autograd.grad(apart, params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
