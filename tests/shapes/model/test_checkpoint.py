"""save_pretrained / from_pretrained: bit-exact round trip, and a clear error
for every way a checkpoint directory (or an input) can be wrong."""

import json
import re

import pytest
import torch

from unigrpo.integrity import MANIFEST
from unigrpo.shapes.model import CheckpointError, ShapesModel


def test_round_trip_is_bit_exact(model, batch, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    loaded = ShapesModel.from_pretrained(tmp_path / "ckpt").eval()
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert sd0[k].dtype == sd1[k].dtype and torch.equal(sd0[k], sd1[k]), k
    assert loaded.config == model.config
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.tokenizer.padding_side == "left"
    tb = batch(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h0, v0 = model(tb.ids, tb.mask, x, torch.full((3,), 0.4))
        h1, v1 = loaded(tb.ids, tb.mask, x, torch.full((3,), 0.4))
    assert torch.equal(h0, h1) and torch.equal(v0, v1)


@pytest.fixture
def saved(make_tiny, tmp_path):
    """A saved directory without its manifest (as the shipped asset): the loader's own checks."""
    d = tmp_path / "ckpt"
    make_tiny().save_pretrained(d)
    (d / MANIFEST).unlink()
    return d


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
@pytest.mark.parametrize("damage", ["flip 64 bytes", "truncate", "delete"])
def test_manifest_names_the_damaged_file(make_tiny, tmp_path, name, damage):
    d = tmp_path / "ckpt"
    make_tiny().save_pretrained(d)
    f = d / name
    data = bytearray(f.read_bytes())
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    else:  # inside the data, where the format itself cannot notice
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        f.write_bytes(data)
    with pytest.raises(CheckpointError, match=re.escape(str(f))):
        ShapesModel.from_pretrained(d)


def test_nonfinite_weights_are_never_written_or_loaded(make_tiny, saved, tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_tiny()
    with torch.no_grad():
        model.velocity_head.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights .* in velocity_head.weight"):
        model.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.safetensors").exists()
    state = load_file(saved / "model.safetensors")
    state["lm_head.weight"][1, 2] = float("inf")
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors: non-finite weights .* in lm_head.weight"):
        ShapesModel.from_pretrained(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ShapesModel.from_pretrained(tmp_path / "nope")


def test_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        ShapesModel.from_pretrained(f)


@pytest.mark.parametrize("name, match", [("config.json", "no config.json"), ("model.safetensors", "no model.safetensors"),
                                         ("tokenizer.json", "no tokenizer.json")])
def test_missing_file(saved, name, match):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=match):
        ShapesModel.from_pretrained(saved)


def test_corrupt_config(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ShapesModel.from_pretrained(saved)


def test_config_with_unknown_or_bad_values(saved):
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, "hiden_size": 64}))
    with pytest.raises(CheckpointError, match="unknown keys.*hiden_size"):
        ShapesModel.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({**cfg, "hidden_size": -4}))
    with pytest.raises(CheckpointError, match="hidden_size must be a positive int"):
        ShapesModel.from_pretrained(saved)


def test_corrupt_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        ShapesModel.from_pretrained(saved)
    (saved / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        ShapesModel.from_pretrained(saved)


def test_corrupt_tokenizer(saved):
    (saved / "tokenizer.json").write_text("garbage")
    with pytest.raises(CheckpointError, match="tokenizer.json is corrupt"):
        ShapesModel.from_pretrained(saved)


@pytest.mark.parametrize("change, match", [({"hidden_size": 64}, "shape mismatch"),
                                           ({"num_hidden_layers": 3}, "missing from the file"),
                                           ({"num_hidden_layers": 1}, "unexpected weight"),
                                           ({"image_expert": False}, "unexpected weight")])
def test_config_does_not_match_weights(saved, change, match):
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(CheckpointError, match=f"does not match.*{match}"):
        ShapesModel.from_pretrained(saved)


def test_config_does_not_match_tokenizer(saved):
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] + 1}))
    with pytest.raises(CheckpointError, match="tokenizer has 75 tokens but config.vocab_size is 76"):
        ShapesModel.from_pretrained(saved)


def test_unknown_token(model):
    with pytest.raises(ValueError, match=r"unknown token\(s\) \['elephant'\]"):
        model.encode_prompts(["a purple elephant"])
    with pytest.raises(ValueError, match="unknown token"):
        model.encode_texts(["<bos> a red circle <think> red blob @ 0 0 </think>"])
    with pytest.raises(TypeError, match="sequence of strings"):
        model.encode_prompts("a red circle")


def test_bad_ids(model):
    ids = torch.tensor([[1, 500]])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 75\)"):
        model.text_forward(ids, torch.ones_like(ids, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have"):
        model.text_forward(torch.tensor([[1, 2]]), torch.ones(1, 3, dtype=torch.bool))


def test_reference_copy_is_frozen_and_independent(model):
    ref = model.reference_copy()
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert not torch.equal(ref.lm_head.weight, model.lm_head.weight)
