"""Evaluation on a tiny (untrained) model: table, JSON and PNG come out,
modes are paired, and runs repeat exactly."""

import json

import pytest
import torch
from PIL import Image

from unigrpo.rollout import sample_images
from unigrpo.shapes.eval import EvalConfig, evaluate, format_table, main, select_prompts
from unigrpo.images import image_grid, save_curves
from unigrpo.shapes.model import ShapesConfig, ShapesModel
from unigrpo.shapes import CATEGORIES, make_split


def _tiny_checkpoint(path):
    torch.manual_seed(0)
    m = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 intermediate_size=32, timestep_embed_dim=16))
    torch.nn.init.normal_(m.velocity_head.weight, std=0.5)
    m.save_pretrained(path)
    return m


def test_eval_cli_writes_table_json_png(tmp_path, capsys):
    _tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--steps", "3", "--both",
                 "--images-per-category", "2", "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    for word in ("category", "overall", "reasoning", "no_reasoning", "mixed_riddle*", "plan accuracy"):
        assert word in text
    res = json.loads((out / "results.json").read_text())
    assert set(res["modes"]) == {"reasoning", "no_reasoning"}
    r = res["modes"]["reasoning"]
    assert 0.0 <= r["overall"] <= 1.0 and set(r["per_category"]) <= set(CATEGORIES)
    assert len(r["samples"]) == res["num_images"] == 2 * len(r["per_category"])
    for mode in res["modes"]:
        img = Image.open(out / f"samples_{mode}.png")
        assert img.format == "PNG" and img.size[0] > 100


def test_eval_cli_takes_builtin_checkpoint_names(capsys):
    assert main(["--checkpoint", "builtin:nope"]) == 2
    assert "--checkpoint 'builtin:nope': unknown; built in: builtin:shapes-sft" in capsys.readouterr().err


def test_sampling_repeats_exactly(tmp_path):
    m = _tiny_checkpoint(tmp_path / "ckpt").eval()
    texts = ["a red circle", "two squares the color of grass"]
    a = sample_images(m, texts, steps=3, temperature=1.0, max_new_tokens=5, seed=4)
    b = sample_images(m, texts, steps=3, temperature=1.0, max_new_tokens=5, seed=4)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (2, 32, 32, 3) and a[0].dtype == torch.uint8
    # batching does not change a sample (noise is drawn per image up front)
    c = sample_images(m, texts, steps=3, temperature=0.0, max_new_tokens=5, seed=4, batch_size=1)
    d = sample_images(m, texts, steps=3, temperature=0.0, max_new_tokens=5, seed=4, batch_size=2)
    assert c[1] == d[1]
    assert (c[0].int() - d[0].int()).abs().max() <= 1


def test_evaluation_guidance_is_cfg_against_the_empty_prompt(tmp_path):
    from unigrpo.rollout import denoise

    m = _tiny_checkpoint(tmp_path / "ckpt").eval()
    texts = ["a red circle", "three triangles"]
    plain = sample_images(m, texts, reasoning=False, steps=3, seed=1)[0]
    assert torch.equal(plain, sample_images(m, texts, reasoning=False, steps=3, seed=1, guidance_scale=1.0)[0])
    guided = sample_images(m, texts, reasoning=False, steps=3, seed=1, guidance_scale=4.0)[0]
    # by hand: v_u + 4 (v_c - v_u) from the same noise
    b = m.encode_prompts(texts, reasoning=False)
    e = m.encode_prompts(["", ""], reasoning=False)
    x1 = torch.randn((2, *m.latent_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        traj = denoise(m, m.image_context(b.ids, b.mask), m.sigma_schedule(3), 0.0, x1, None, record=False,
                       uncond=m.image_context(e.ids, e.mask), guidance_scale=4.0)
        expected = m.latents_to_images(traj.latents[:, -1])
    assert torch.equal(guided, expected) and not torch.equal(guided, plain)
    with pytest.raises(ValueError, match="--guidance-scale must be >= 1"):
        EvalConfig(guidance_scale=0.5).validate()


def test_evaluate_in_process_and_table(tmp_path):
    m = _tiny_checkpoint(tmp_path / "ckpt")
    res = evaluate(EvalConfig(checkpoint="", steps=2, modes=("no_reasoning",), images_per_category=1), policy=m)
    assert "no_reasoning" in format_table(res) and "plan accuracy" not in format_table(res)


def test_select_prompts_balanced_and_deterministic():
    held = make_split(0).heldout
    a = select_prompts(held, 5, seed=0)
    assert a == select_prompts(held, 5, seed=0)
    cats = {p.category for p in held}
    assert len(a) == 5 * len(cats)
    assert all(sum(p.category == c for p in a) == 5 for c in cats)


def test_image_helpers(tmp_path):
    imgs = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    g = image_grid(imgs, [f"caption {i} " * 5 for i in range(5)], cols=3)
    assert g.size[0] > 3 * 96 and g.size[1] > 2 * 96
    p = save_curves(tmp_path / "c.png", {"lm": [3, 2, 1.5, 1.2], "flow": [1, 0.9, 0.8, 0.8]}, smooth=2)
    assert Image.open(p).format == "PNG"
