"""The text context's KV cache, computed once, gives the same velocities as
the packed one-sequence forward and as recomputing it; it is never mutated."""

import copy

import pytest
import torch
from helpers import assert_close_earned

from unigrpo.shapes.model import KVImageContext


def test_cached_context_matches_packed_forward(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    x = torch.randn(b, 3, 32, 32)
    sigma = torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        _, v_packed = model(tb.ids, tb.mask, x, sigma)
        ctx = model.image_context(tb.ids, tb.mask)
        v_cached = model.velocity(x, sigma, ctx)
    torch.testing.assert_close(v_cached, v_packed, rtol=1e-5, atol=1e-5)


def test_context_reused_across_steps_equals_recomputed(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    with torch.no_grad():
        ctx = model.image_context(tb.ids, tb.mask)
        before = [(k.clone(), v.clone()) for k, v in ctx.kv]
        x = torch.randn(b, 3, 32, 32)
        for sigma in (1.0, 0.7, 0.3):  # a few denoising steps on the same context
            v = model.velocity(x, torch.full((b,), sigma), ctx)
            fresh = model.velocity(x, torch.full((b,), sigma), model.image_context(tb.ids, tb.mask))
            torch.testing.assert_close(v, fresh, rtol=0, atol=0)
            x = x - 0.3 * v
    for (k0, v0), (k1, v1) in zip(before, ctx.kv):  # the context was not appended to
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_context_select_and_batch_independence(model, batch):
    tb = batch(model)
    x = torch.randn(6, 3, 32, 32)
    sigma = torch.rand(6) * 0.9 + 0.05
    with torch.no_grad():
        ctx = model.image_context(tb.ids, tb.mask)
        rows = torch.tensor([0, 0, 1, 1, 2, 2])
        v = model.velocity(x, sigma, ctx.select(rows))
        for i in range(6):
            one = model.encode_texts([model.decode(tb.ids[rows[i]:rows[i] + 1], tb.mask[rows[i]:rows[i] + 1])[0]])
            v1 = model.velocity(x[i:i + 1], sigma[i:i + 1], model.image_context(one.ids, one.mask))
            torch.testing.assert_close(v[i:i + 1], v1, rtol=1e-5, atol=1e-5)
    assert isinstance(ctx.detach(), KVImageContext) and ctx.batch_size == 3


def test_image_loss_reaches_text_through_context(make_tiny, batch):
    model = make_tiny().train()
    tb = batch(model)
    ctx = model.image_context(tb.ids, tb.mask)
    model.velocity(torch.randn(3, 3, 32, 32), torch.full((3,), 0.5), ctx).pow(2).mean().backward()
    assert model.embed_tokens.weight.grad is not None and model.embed_tokens.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.velocity(torch.randn(3, 3, 32, 32), torch.full((3,), 0.5), ctx.detach()).pow(2).mean().backward()
    assert model.embed_tokens.weight.grad is None


def test_velocity_input_errors(model, batch):
    tb = batch(model)
    with torch.no_grad():
        ctx = model.image_context(tb.ids, tb.mask)
        with pytest.raises(ValueError, match="x must be"):
            model.velocity(torch.randn(3, 3, 16, 16), torch.full((3,), 0.5), ctx)
        with pytest.raises(ValueError, match="context has 3 rows"):
            model.velocity(torch.randn(2, 3, 32, 32), torch.full((2,), 0.5), ctx)
        with pytest.raises(ValueError, match="sigma"):
            model.velocity(torch.randn(3, 3, 32, 32), torch.full((2,), 0.5), ctx)
        v = model.velocity(torch.randn(3, 3, 32, 32), 0.5, ctx)  # a scalar sigma broadcasts
        assert v.shape == (3, 3, 32, 32)


def test_zero_initialised_velocity_head():
    from unigrpo.shapes.model import ShapesConfig, ShapesModel

    m = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 intermediate_size=32, timestep_embed_dim=16))
    b = m.encode_prompts(["a red circle"], reasoning=False)
    with torch.no_grad():
        v = m.velocity(torch.randn(1, 3, 32, 32), 0.5, m.image_context(b.ids, b.mask))
    assert bool((v == 0).all())


def test_latents_round_trip(model):
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    x = model.images_to_latents(images)
    assert x.shape == (2, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(model.latents_to_images(x), images)
    with pytest.raises(ValueError, match="uint8"):
        model.images_to_latents(images.float())


def test_position_table_starts_distinct():
    from unigrpo.shapes.model.shapes_model import sincos_2d

    t = sincos_2d(8, 32)
    assert t.shape == (64, 32)
    d = torch.cdist(t, t) + torch.eye(64) * 1e3
    assert float(d.min()) > 0.1  # every patch position distinguishable at init
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(8, 30)


def test_one_pass_gives_text_states_and_context(model, batch):
    """``text_and_image_context`` (the trainer's one pass per minibatch) equals
    ``text_forward`` and ``image_context`` run apart, gradients included (to within
    what fp32 itself earns: the two-pass fp32 gradients' worst error against fp64)."""
    tb = batch(model)
    x = torch.randn(tb.ids.shape[0], 3, 32, 32)
    sigma = torch.tensor([0.9, 0.5, 0.1])
    hidden, ctx = model.text_and_image_context(tb.ids, tb.mask)
    real = tb.mask[..., None]
    torch.testing.assert_close(hidden * real, model.text_forward(tb.ids, tb.mask) * real, rtol=1e-5, atol=1e-6)
    v_one = model.velocity(x, sigma, ctx)
    torch.testing.assert_close(v_one, model.velocity(x, sigma, model.image_context(tb.ids, tb.mask)),
                               rtol=1e-5, atol=1e-6)
    (hidden.square().sum() + v_one.square().sum()).backward()
    one = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def two_pass_grads(m, dtype):
        m.zero_grad()
        xx = x.to(dtype)
        (m.text_forward(tb.ids, tb.mask).square().sum()
         + m.velocity(xx, sigma, m.image_context(tb.ids, tb.mask)).square().sum()).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    two = two_pass_grads(model, torch.float32)
    exact = two_pass_grads(copy.deepcopy(model).double(), torch.float64)
    assert one.keys() == two.keys() == exact.keys()
    for n in one:
        assert_close_earned(one[n], exact[n], ref_lo=two[n])
