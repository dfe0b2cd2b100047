"""A tiny SFT run: runs, the losses go down, it is deterministic, and it
writes a loadable checkpoint."""

import json

import numpy as np
import pytest
import torch

from unigrpo.shapes.model import ShapesModel
from unigrpo.shapes.sft import SFTConfig, _reasoning_targets, main, make_batch, train
from unigrpo.shapes import default_plan, detect, make_split
from unigrpo.shapes.vocab import COLOR_NAMES

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, batch_size=8,
            lr=3e-3, warmup_steps=5, progress=False)


def test_tiny_run_learns_and_repeats(tmp_path):
    model, log = train(SFTConfig(out=str(tmp_path / "a"), steps=40, seed=1, **TINY))
    lm = [r["lm"] for r in log]
    flow = [r["flow"] for r in log]
    assert np.mean(lm[-5:]) < 0.7 * np.mean(lm[:5])
    assert np.mean(flow[-5:]) < np.mean(flow[:5])
    assert all(np.isfinite(r["loss"]) for r in log)
    loaded = ShapesModel.from_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "sft_config.json").read_text())["steps"] == 40
    assert len((tmp_path / "a" / "train_log.jsonl").read_text().splitlines()) == 40
    # same seed -> bit-identical weights; another seed -> different ones
    again, _ = train(SFTConfig(out=str(tmp_path / "b"), steps=40, seed=1, **TINY))
    for (k, v), (_, w) in zip(loaded.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    other, _ = train(SFTConfig(out=str(tmp_path / "c"), steps=2, seed=2, **TINY))
    assert not torch.equal(other.lm_head.weight, again.lm_head.weight)


def test_make_batch():
    split = make_split(0)
    rng = np.random.default_rng(0)
    b = make_batch(rng, split.train, 64, drop_reasoning=0.5, exclude_pairs=split.heldout_pairs)
    assert b.images.shape == (64, 32, 32, 3) and b.images.dtype == np.uint8
    assert 10 < b.reasoning.sum() < 54
    for text, keep, p in zip(b.texts, b.reasoning, b.prompts):
        assert text.startswith(f"<bos> {p.text}")
        assert text.endswith("</think>") == bool(keep)
        assert not any(f"{c} {s}" in text.split("<think>")[-1] for s, c in split.heldout_pairs) or not keep
    b2 = make_batch(np.random.default_rng(0), split.train, 64, 0.5, split.heldout_pairs)
    assert b2.texts == b.texts and np.array_equal(b2.images, b.images)


def test_make_batch_default_layout():
    """Without reasoning the image shows the prompt's default plan; the other examples, and
    which examples keep their reasoning, are those of the random-layout batch."""
    split = make_split(0)
    rand = make_batch(np.random.default_rng(3), split.train, 32, 0.5, split.heldout_pairs)
    fixed = make_batch(np.random.default_rng(3), split.train, 32, 0.5, split.heldout_pairs, default_layout=True)
    assert fixed.texts == rand.texts and np.array_equal(fixed.reasoning, rand.reasoning)
    assert np.array_equal(fixed.images[fixed.reasoning], rand.images[rand.reasoning])
    dropped = np.flatnonzero(~fixed.reasoning)
    assert len(dropped) > 5
    det = detect(fixed.images[dropped])
    cell = 32 / 3
    for j, i in enumerate(dropped):  # the detector finds the default plan's objects in its cells
        rows = range(det.offsets[j], det.offsets[j + 1])
        seen = {(COLOR_NAMES[det.color[r]], int(det.cx[r] // cell), int(det.cy[r] // cell)) for r in rows}
        want = default_plan(fixed.prompts[i], split.heldout_pairs)
        assert seen == {(o.color, o.x, o.y) for o in want}, fixed.prompts[i].text


def test_reasoning_targets():
    ids = torch.tensor([[0, 1, 9, 4, 10, 11, 5], [1, 9, 9, 9, 9, 9, 9]])
    mask = torch.tensor([[False] + [True] * 6, [True] * 7])
    t = _reasoning_targets(ids, mask, think_id=4)
    assert t.tolist() == [[False, False, False, False, True, True, True], [False] * 7]


def test_cli(tmp_path, capsys):
    args = ["--out", str(tmp_path / "cli"), "--steps", "2", "--no-progress"]
    for k, v in TINY.items():
        if k != "progress":
            args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 0
    assert "saved" in capsys.readouterr().out
    ShapesModel.from_pretrained(tmp_path / "cli")
    capsys.readouterr()
    with pytest.raises(SystemExit, match="2"):
        main(["--steps", "2"])  # --out is required
    assert capsys.readouterr().err.strip() == ("python -m unigrpo.sft: error: the following arguments are required: "
                                               "--out (--help lists the options)")
    with pytest.raises(ValueError, match=r"--drop-reasoning must be in \[0, 1\], got 1.5"):
        SFTConfig(out="x", drop_reasoning=1.5)
    assert main(["--out", str(tmp_path / "bad"), "--lr", "0"]) == 2  # one line, no traceback
    err = capsys.readouterr().err.strip()
    assert err == "python -m unigrpo.sft: error: --lr must be > 0, got 0.0"


def test_cli_multi_round_warm_start_with_edits(tmp_path, capsys):
    args = ["--out", str(tmp_path / "edits"), "--steps", "2", "--no-progress", "--reflect", "1", "--edit", "0.5",
            "--batch-size", "8"]
    for k, v in TINY.items():
        if k not in ("progress", "batch_size"):
            args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 0
    assert json.loads((tmp_path / "edits" / "sft_config.json").read_text())["edit"] == 0.5
    assert main(["--out", str(tmp_path / "bad"), "--edit", "2"]) == 2
    assert "--edit must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_param_groups_split_text_and_image():
    from unigrpo.shapes.sft import build_model, param_groups

    cfg = SFTConfig(out="x", lr=1e-3, lr_image=3e-3, **{k: v for k, v in TINY.items() if k not in ("lr",)})
    model = build_model(cfg)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    by_id = {id(p): n for n, p in model.named_parameters()}
    text = {by_id[i] for n in ("text", "text/no_decay") for i in ids[n]}
    assert "lm_head.weight" in text and "embed_tokens.weight" in text and "layers.0.mlp.up_proj.weight" in text
    assert not any("image" in n or "self_attn" in n or "velocity" in n for n in text)
    assert groups["image"]["peak_lr"] == 3e-3 and groups["text"]["peak_lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_bf16_autocast_run(tmp_path):
    _, log = train(SFTConfig(out=str(tmp_path / "bf"), steps=3, bf16=True, **TINY))
    assert all(np.isfinite(r["loss"]) for r in log)
