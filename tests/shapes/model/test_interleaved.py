"""Multi-round (interleaved) sequences of the built-in model: with no images it is the
single-round model; one packed pass over text with images inside equals generating
it incrementally (prefill after an image, then decode); every image's context equals
the single-round context of its prefix and does not depend on the batch."""

import pytest
import torch

from unigrpo.policy import SeenImages

TURN1 = ["<bos> a red circle <think> red circle @ 1 1 </think>",
         "<bos> two squares the color of grass <think> green square @ 0 0 ; green square @ 2 2 </think>",
         "<bos> a blue triangle <think> blue triangle @ 0 1 </think>"]
TURN2 = ["red circle @ 2 2 </think>", "<eos>", "blue triangle @ 1 1 ; red circle @ 0 0 </think>"]


def _episode(model):
    """Full text (left-padded), the slot of image 1 per row, and two clean images per row."""
    full = model.encode_texts([f"{a} {b}" for a, b in zip(TURN1, TURN2)])
    n2 = torch.tensor([len(model.encode_texts([t]).ids[0]) for t in TURN2])
    slots = full.ids.shape[1] - n2
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((3, 2, 3, 32, 32), generator=g) * 2 - 1
    return full, slots, x0


def _images(x0, slots, present):
    return SeenImages(x0[:, :slots.shape[1]], slots, present)


def test_no_images_is_the_single_round_model(model, batch):
    tb = batch(model)
    b, length = tb.ids.shape
    none = SeenImages.empty(b, model.latent_shape, tb.ids.device)
    with torch.no_grad():
        logits, _ = model.prefill(tb.ids, tb.mask)
        logits_i, _ = model.interleaved_prefill(tb.ids, tb.mask, none)
        torch.testing.assert_close(logits_i, logits, rtol=1e-5, atol=1e-5)
        hidden = model.text_forward(tb.ids, tb.mask)
        hidden_i, _ = model.interleaved_contexts(tb.ids, tb.mask, none)
        torch.testing.assert_close(hidden_i, hidden, rtol=1e-5, atol=1e-5)
        # an image at the end: its context is the single-round one, and the text is unchanged
        x = torch.randn(b, 3, 32, 32)
        sigma = torch.tensor([0.9, 0.5, 0.1])
        at_end = SeenImages(torch.zeros(b, 1, 3, 32, 32), torch.full((b, 1), length),
                            torch.ones(b, 1, dtype=torch.bool))
        hidden_e, ctx = model.interleaved_contexts(tb.ids, tb.mask, at_end)
        torch.testing.assert_close(hidden_e[:, :-1], hidden[:, :-1], rtol=1e-5, atol=1e-5)
        v = model.velocity(x, sigma, ctx)
        v_single = model.velocity(x, sigma, model.image_context(tb.ids, tb.mask))
        torch.testing.assert_close(v, v_single, rtol=1e-5, atol=1e-5)
        v_new = model.velocity(x, sigma, model.interleaved_image_context(tb.ids, tb.mask, none))
        torch.testing.assert_close(v_new, v_single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_packed_pass_equals_generating_after_the_image(model, static):
    full, slots, x0 = _episode(model)
    b = full.ids.shape[0]
    one = torch.ones(b, 1, dtype=torch.bool)
    with torch.no_grad():
        hidden, _ = model.interleaved_contexts(full.ids, full.mask, _images(x0, slots[:, None], one))
        packed_logits = hidden @ model.lm_head_weight.T
        # incrementally: turn 1 with the image at its end, then turn 2 one token at a time
        first = model.encode_texts(TURN1)
        l1 = first.ids.shape[1]
        second = [model.encode_texts([t]).ids[0] for t in TURN2]
        n2 = max(len(s) for s in second)
        logits, state = model.interleaved_prefill(first.ids, first.mask,
                                                  _images(x0, torch.full((b, 1), l1), one),
                                                  max_new_tokens=n2 if static else None)
        for k in range(n2):
            active = torch.tensor([k < len(s) for s in second])
            for i in range(b):
                if active[i]:  # the token at column slots[i] + k is predicted from the state before it
                    torch.testing.assert_close(logits[i], packed_logits[i, slots[i] + k - 1], rtol=1e-4, atol=1e-5)
            tok = torch.tensor([int(s[k]) if k < len(s) else model.pad_token_id for s in second])
            logits = model.decode_step(tok, active, state)


def test_each_image_sees_its_prefix_only_and_rows_are_independent(model):
    full, slots, x0 = _episode(model)
    b, length = full.ids.shape
    present = torch.tensor([[True, True], [True, False], [True, True]])  # row 1 ended after looking
    two = _images(x0, torch.stack([slots, torch.full((b,), length)], 1), present)
    x = torch.randn(b * 2, 3, 32, 32)
    sigma = torch.rand(b * 2) * 0.9 + 0.05
    with torch.no_grad():
        hidden, ctx = model.interleaved_contexts(full.ids, full.mask, two)
        v = model.velocity(x, sigma, ctx)
        first = model.encode_texts(TURN1)
        v1 = model.velocity(x[0::2], sigma[0::2], model.image_context(first.ids, first.mask))
        torch.testing.assert_close(v[0::2], v1, rtol=1e-5, atol=1e-5)  # image 1: the single-round context
        assert torch.isfinite(v).all()
        for i in range(b):  # a row alone, without the batch's padding, gives the same
            alone = model.encode_texts([f"{TURN1[i]} {TURN2[i]}"])
            pad = length - alone.ids.shape[1]
            img = SeenImages(two.latents[i:i + 1], two.slots[i:i + 1] - pad, two.present[i:i + 1])
            h_i, ctx_i = model.interleaved_contexts(alone.ids, alone.mask, img)
            torch.testing.assert_close(h_i[0, :-1], hidden[i, pad:-1], rtol=1e-4, atol=1e-5)
            if present[i, 1]:
                one = slice(2 * i + 1, 2 * i + 2)
                v_i = model.velocity(x[one], sigma[one], ctx_i.select(torch.tensor([1])))
                torch.testing.assert_close(v_i, v[one], rtol=1e-5, atol=1e-5)
        # the second image depends on the first (it attends to it); the first does not depend on the second
        other = SeenImages(two.latents.flip(1), two.slots, two.present)
        _, ctx_o = model.interleaved_contexts(full.ids, full.mask, other)
        v_o = model.velocity(x, sigma, ctx_o)
        torch.testing.assert_close(v_o[0::2], v[0::2], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(v_o[5], v[5], atol=1e-4)


def test_gradients_reach_both_images_paths(make_tiny):
    model = make_tiny().train()
    full, slots, x0 = _episode(model)
    b = full.ids.shape[0]
    hidden, ctx = model.interleaved_contexts(full.ids, full.mask,
                                             _images(x0, slots[:, None], torch.ones(b, 1, dtype=torch.bool)))
    loss = hidden.pow(2).mean() + model.velocity(torch.randn(b, 3, 32, 32), torch.full((b,), 0.5), ctx).pow(2).mean()
    loss.backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0  # the looked-at image's tokens get a gradient
    assert model.embed_tokens.weight.grad.abs().sum() > 0


def test_bad_images_get_clear_errors(make_tiny):
    model = make_tiny()
    full, slots, x0 = _episode(model)
    b, length = full.ids.shape
    ok = torch.ones(b, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="images.slots must lie in"):
        model.interleaved_contexts(full.ids, full.mask, _images(x0, torch.full((b, 1), length + 1), ok))
    with pytest.raises(ValueError, match="prefix"):
        model.interleaved_contexts(full.ids, full.mask, _images(x0, torch.stack([slots, slots], 1),
                                                                torch.tensor([[False, True]] * b)))
    with pytest.raises(TypeError, match="SeenImages"):
        model.interleaved_prefill(full.ids, full.mask, x0)


def test_looking_equals_the_single_round_image_pass_then_the_look_token(model):
    """Independent of the packing: draw-time machinery (the image tokens at sigma = 0 run
    against the text's cache, full attention among themselves), then ``<think>`` decoded on
    that cache, gives the logits the interleaved prefill gives after the image."""
    from transformers import DynamicCache

    from unigrpo.shapes.model.masks import image_mask

    first = model.encode_texts(TURN1)
    b, l1 = first.ids.shape
    x0 = torch.rand(b, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ctx = model.image_context(first.ids, first.mask)
        cache = DynamicCache(ddp_cache_data=ctx.kv)
        n = model.config.num_patches
        model._run(model._image_tokens(x0, torch.zeros(b)), 0, ctx.image_position[:, None].expand(-1, n),
                   image_mask(ctx.key_mask, n), cache)
        look = torch.full((b, 1), model.special["think"])
        hidden = model._text_pass(look, torch.ones(b, 1, dtype=torch.bool), cache,
                                  torch.cat([ctx.key_mask, torch.ones(b, n, dtype=torch.bool)], 1),
                                  ctx.image_position + 1)
        expected = model.lm_head(hidden[:, -1])
        logits, state = model.interleaved_prefill(first.ids, first.mask, SeenImages(
            x0[:, None], torch.full((b, 1), l1), torch.ones(b, 1, dtype=torch.bool)))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(state.seen, ctx.image_position + 2)  # decoding continues after the look token
