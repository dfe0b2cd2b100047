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
