"""KV-cache generation equals the teacher-forced full forward; sampling is
seeded, stops at </think>, and reports truncation."""

import pytest
import torch

from unigrpo.policy import concat_tokens
from unigrpo.sampling import filter_logits, generate_reasoning, sample_tokens


@pytest.mark.parametrize("static", [False, True], ids=["dynamic-cache", "static-cache"])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_cached_generation_matches_full_forward(model, prompts, temperature, static):
    b = model.encode_prompts(prompts)
    g = torch.Generator().manual_seed(3)
    r = generate_reasoning(model, b.ids, b.mask, max_new_tokens=12, temperature=temperature, generator=g)
    ids, mask = concat_tokens(b.ids, b.mask, r.ids, r.mask)
    lp = model.token_logprobs(ids, mask, r.temperature, start=b.ids.shape[1])
    torch.testing.assert_close(lp, r.logprobs, rtol=1e-5, atol=1e-5)
    assert bool((r.logprobs[~r.mask] == 0).all())
    # the logits of every step, not only the sampled token's log-prob
    logits, state = model.prefill(b.ids, b.mask, max_new_tokens=12 if static else None)
    full = model.token_logits(ids, mask)
    start = b.ids.shape[1] - 1
    for t in range(r.ids.shape[1]):
        active = r.mask[:, t]
        torch.testing.assert_close(logits[active], full[active, start + t], rtol=1e-5, atol=1e-5)
        if t + 1 < r.ids.shape[1]:
            logits = model.decode_step(r.ids[:, t], active, state)


def test_static_decode_state_is_updated_in_place(make_tiny, prompts):
    """What CUDA-graph capture needs: after prefill, decode steps never reallocate the state."""
    model = make_tiny()
    b = model.encode_prompts(prompts)
    _, state = model.prefill(b.ids, b.mask, max_new_tokens=4)
    ptrs = (state.key_mask.data_ptr(), state.seen.data_ptr(), state.next_col.data_ptr())
    tok = torch.full((len(prompts),), 5)
    for _ in range(3):
        model.decode_step(tok, torch.tensor([True, False, True]), state)
    assert (state.key_mask.data_ptr(), state.seen.data_ptr(), state.next_col.data_ptr()) == ptrs
    assert int(state.next_col) == b.ids.shape[1] + 3
    assert state.key_mask[:, b.ids.shape[1]:].tolist() == [[True] * 3 + [False], [False] * 4, [True] * 3 + [False]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_decode_equals_eager(make_tiny, prompts):
    model = make_tiny().to("cuda")
    b = model.encode_prompts(prompts)
    runs = [generate_reasoning(model, b.ids, b.mask, max_new_tokens=10, cuda_graph=graphed,
                                     generator=torch.Generator("cuda").manual_seed(7)) for graphed in (False, True)]
    assert torch.equal(runs[0].ids, runs[1].ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, rtol=1e-5, atol=1e-5)


def test_token_logprobs_entropy_and_unfused_agree(model, batch):
    tb = batch(model)
    lp, ent = model.token_logprobs(tb.ids, tb.mask, 0.8, return_entropy=True)  # tokens 1 .. L - 1
    logits = model.token_logits(tb.ids, tb.mask)[:, :-1] / 0.8
    ref = torch.log_softmax(logits, -1).gather(-1, tb.ids[:, 1:, None])[..., 0]
    valid = tb.mask[:, 1:] & tb.mask[:, :-1]
    torch.testing.assert_close(lp[valid], ref[valid], rtol=1e-5, atol=1e-5)
    p = torch.softmax(logits, -1)
    ref_ent = -(p * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(ent[valid], ref_ent[valid], rtol=1e-4, atol=1e-5)
    assert bool((lp[~valid] == 0).all())
    # from a later start: the same numbers, the earlier columns left out
    torch.testing.assert_close(model.token_logprobs(tb.ids, tb.mask, 0.8, start=3), lp[:, 2:])
    with pytest.raises(ValueError, match="start must be in"):
        model.token_logprobs(tb.ids, tb.mask, 0.8, start=0)


def test_seeded_generation_repeats(model, prompts):
    b = model.encode_prompts(prompts)
    runs = [generate_reasoning(model, b.ids, b.mask, max_new_tokens=10, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0].ids, runs[1].ids) and torch.equal(runs[0].logprobs, runs[1].logprobs)
    other = generate_reasoning(model, b.ids, b.mask, max_new_tokens=10, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other.ids, runs[0].ids)


def test_stop_token_and_truncation(make_tiny, prompts):
    model = make_tiny()
    stop = model.special["end_think"]
    with torch.no_grad():  # make </think> overwhelmingly likely for row 0's context only via the bias trick
        model.lm_head.weight.zero_()
    bias = torch.zeros(model.config.vocab_size)
    bias[stop] = 50.0
    orig = model.lm_head.forward
    model.lm_head.forward = lambda h: orig(h) + bias
    b = model.encode_prompts(prompts)
    r = generate_reasoning(model, b.ids, b.mask, max_new_tokens=5, temperature=1.0,
                                 generator=torch.Generator().manual_seed(0))
    assert r.ids.shape[1] == 1 and bool((r.ids[:, 0] == stop).all()) and not r.truncated.any()
    bias[list(model.stop_token_ids)] = -50.0  # no stop token at all (<eos> stops too)
    r = generate_reasoning(model, b.ids, b.mask, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    assert r.ids.shape == (3, 5) and bool(r.truncated.all()) and bool(r.mask.all())


def test_rows_stop_independently(model, prompts):
    b = model.encode_prompts(prompts)
    r = generate_reasoning(model, b.ids, b.mask, max_new_tokens=30, generator=torch.Generator().manual_seed(1))
    stops = torch.tensor(model.stop_token_ids)
    for i in range(r.ids.shape[0]):
        n = int(r.mask[i].sum())
        assert bool(r.mask[i, :n].all()) and not r.mask[i, n:].any()  # contiguous
        hit = torch.isin(r.ids[i, :n], stops)
        assert bool(hit[-1]) != bool(r.truncated[i]) and not hit[:-1].any()
        assert bool((r.ids[i, n:] == model.pad_token_id).all())


def test_filter_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    p = torch.softmax(logits, -1)[0]  # ~[0.64, 0.24, 0.09, 0.03]
    kept = torch.isfinite(filter_logits(logits, top_p=0.7)[0])
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=float(p[0]) / 2)[0]).sum() == 1  # top token always kept
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(logits, top_k=-1)


def test_sample_tokens_respects_filters():
    logits = torch.randn(64, 10)
    g = torch.Generator().manual_seed(0)
    ids, lp = sample_tokens(logits, 1.0, top_k=1, generator=g)
    assert torch.equal(ids, logits.argmax(-1))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(1, ids[:, None])[:, 0])
    ids, lp = sample_tokens(logits, 0.0)
    assert torch.equal(ids, logits.argmax(-1))
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(logits, -1.0)
