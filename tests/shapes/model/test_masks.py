"""The attention rule, checked on outputs of the packed forward: text is
causal and never sees image tokens; image tokens see all the text and each
other; padding is inert."""

import torch

from unigrpo.shapes.model.masks import causal_mask, image_mask, joint_mask, text_positions


def _run(model, ids, mask, x, sigma):
    with torch.no_grad():
        return model(ids, mask, x, sigma)


def test_joint_mask_layout():
    mask = torch.tensor([[False, True, True], [True, True, True]])
    m = joint_mask(mask, 2)[:, 0]
    assert m.shape == (2, 5, 5)
    # row 0: pad query 0 sees only itself; text queries causal over real keys; no text query sees images
    assert m[0, 0].tolist() == [True, False, False, False, False]
    assert m[0, 2].tolist() == [False, True, True, False, False]
    assert not m[:, :3, 3:].any()
    # image queries: every real text key and every image key, pads excluded
    assert m[0, 3].tolist() == [False, True, True, True, True]
    assert m[1, 4].tolist() == [True, True, True, True, True]
    assert torch.equal(causal_mask(mask, 3), joint_mask(mask, 2)[:, :, :3, :3])
    assert torch.equal(image_mask(mask, 2), joint_mask(mask, 2)[:, :, 3:, :])
    assert text_positions(mask).tolist() == [[0, 0, 1], [0, 1, 2]]


def test_text_never_sees_image(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    x = torch.randn(b, 3, 32, 32)
    sigma = torch.full((b,), 0.6)
    h1, v1 = _run(model, tb.ids, tb.mask, x, sigma)
    h2, v2 = _run(model, tb.ids, tb.mask, torch.randn_like(x) * 3, torch.full((b,), 0.1))
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)  # masked keys contribute exactly zero
    assert not torch.allclose(v1, v2)


def test_image_sees_text(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    x = torch.randn(b, 3, 32, 32)
    sigma = torch.full((b,), 0.5)
    _, v1 = _run(model, tb.ids, tb.mask, x, sigma)
    ids = tb.ids.clone()
    ids[:, -3] = model.tokenizer.convert_tokens_to_ids("purple")  # a plan word, every row
    _, v2 = _run(model, ids, tb.mask, x, sigma)
    changed = (v1 - v2).flatten(1).abs().amax(1)
    assert bool((changed > 1e-4).all()), changed


def test_image_tokens_see_each_other(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    x = torch.randn(b, 3, 32, 32)
    sigma = torch.full((b,), 0.5)
    _, v1 = _run(model, tb.ids, tb.mask, x, sigma)
    x2 = x.clone()
    x2[:, :, 28:, 28:] += 2.0  # last patch only
    _, v2 = _run(model, tb.ids, tb.mask, x2, sigma)
    # the first patch (top-left 4x4) changes although its own pixels did not: bidirectional attention
    assert (v1[:, :, :4, :4] - v2[:, :, :4, :4]).abs().amax() > 1e-4


def test_text_is_causal(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    x = torch.randn(b, 3, 32, 32)
    sigma = torch.full((b,), 0.5)
    h1, _ = _run(model, tb.ids, tb.mask, x, sigma)
    ids = tb.ids.clone()
    ids[:, -1] = model.tokenizer.convert_tokens_to_ids("red")
    h2, _ = _run(model, ids, tb.mask, x, sigma)
    # positions before the changed token are untouched; it and everything after change
    torch.testing.assert_close(h1[:, :-2], h2[:, :-2], rtol=0, atol=0)
    assert (h1[:, -2:] - h2[:, -2:]).abs().amax() > 1e-4


def test_padding_is_inert(model, batch):
    tb = batch(model)
    b = tb.ids.shape[0]
    x = torch.randn(b, 3, 32, 32)
    sigma = torch.full((b,), 0.5)
    h1, v1 = _run(model, tb.ids, tb.mask, x, sigma)
    ids = tb.ids.masked_fill(~tb.mask, model.tokenizer.convert_tokens_to_ids("circle"))
    h2, v2 = _run(model, ids, tb.mask, x, sigma)
    torch.testing.assert_close(h1[:, :-1][tb.mask], h2[:, :-1][tb.mask], rtol=0, atol=0)  # h ends with <image>
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    # extra left padding shifts nothing: positions count real tokens only
    pad = torch.full((b, 3), model.pad_token_id)
    ids3 = torch.cat([pad, tb.ids], 1)
    mask3 = torch.cat([torch.zeros(b, 3, dtype=torch.bool), tb.mask], 1)
    h3, v3 = _run(model, ids3, mask3, x, sigma)
    torch.testing.assert_close(h3[:, 3:], h1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v3, v1, rtol=1e-5, atol=1e-5)
