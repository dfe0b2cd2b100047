"""Damaged checkpoints are refused with a message naming the file, never loaded:
every file of a checkpoint truncated, bit-flipped or deleted, a NaN weight, a
garbage ``latest``, an empty ``config.yaml``. And what a resume keeps: the metrics
of the checkpoint (a torn last line or a dead iteration's rows are gone), a run
without a checkpoint starts again, a new run never appends to an old one."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_runs import FAST, stop_after, tiny, toy_task, trainer

from unigrpo.integrity import MANIFEST, CheckpointError, write_manifest
from unigrpo.train import Trainer, load_config
from unigrpo.train.__main__ import main as train_main
from unigrpo.train.checkpointing import resolve_policy_dir

FILES = ["policy/model.safetensors", "policy/config.json", "policy/tokenizer.json", "policy/manifest.json",
         "trainer_state.pt", "config.yaml", MANIFEST]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-iteration tiny run with checkpoints 1 and 2."""
    out = tmp_path_factory.mktemp("run")
    trainer(out, ["train.iterations=2", "train.save_every=1"]).fit()
    return out


@pytest.fixture
def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def resume(run_dir, **kw):
    cfg = load_config(None, FAST + [f"train.output_dir={run_dir}", "train.iterations=3", "train.save_every=1"])
    return Trainer(cfg, task=toy_task(), policy=tiny(0), progress=False, evaluate=False, resume=run_dir, **kw)


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":  # 64 bytes in the middle, where most formats cannot notice
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
        path.write_bytes(data)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("name", FILES)
def test_every_damaged_file_is_named(copy, name, how):
    f = copy / "checkpoint-000002" / name
    damage(f, how)
    with pytest.raises(CheckpointError, match=re.escape(str(f))):
        resume(copy)
    with pytest.raises(CheckpointError, match="checkpoint-000002"):  # evaluation refuses it too
        resolve_policy_dir(copy)


def test_nan_weight_is_refused_by_name_even_with_a_matching_manifest(copy):
    ck = copy / "checkpoint-000002"
    weights = ck / "policy" / "model.safetensors"
    state = load_file(weights)
    state["velocity_head.bias"][0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=re.escape(str(weights))):  # the manifest notices first
        resume(copy)
    for d in (ck / "policy", ck):  # a writer that hashed the NaN in (an older or buggy one)
        (d / MANIFEST).unlink()
        write_manifest(d, None if d == ck else ["config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json"])
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or inf\) in velocity_head.bias"):
        resume(copy)


def test_garbage_latest_names_the_file_and_the_checkpoints_present(copy):
    (copy / "latest").write_bytes(bytes(range(200, 256)))
    with pytest.raises(CheckpointError, match=r"latest is corrupt.*checkpoint-000001, checkpoint-000002"):
        resume(copy)
    (copy / "latest").write_text("checkpoint-000009\n")
    with pytest.raises(CheckpointError, match="points to .*checkpoint-000009, which does not exist"):
        resume(copy)


def test_a_checkpoint_without_manifest_is_refused(copy):
    (copy / "checkpoint-000002" / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-000002/manifest.json is missing"):
        resume(copy)


def test_resume_from_an_earlier_checkpoint_directory(copy):
    damage(copy / "checkpoint-000002" / "trainer_state.pt", "flip")
    t = resume(copy / "checkpoint-000001")
    assert t.iteration == 1 and [r["iteration"] for r in t.history] == [1]


def test_cli_refuses_an_empty_or_broken_run_config(copy, capsys):
    (copy / "config.yaml").write_text("")
    assert train_main(["--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"config file {copy / 'config.yaml'} is empty" in err
    (copy / "config.yaml").write_text("loss:\n  beta_v: [1,\n")
    assert train_main(["--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"config.yaml is not valid YAML at line \d+, column \d+", err)


def test_cli_names_a_damaged_checkpoint_in_one_line(copy, capsys):
    damage(copy / "checkpoint-000002" / "trainer_state.pt", "flip")
    (copy / "config.yaml").write_text((copy / "checkpoint-000002" / "config.yaml").read_text())
    assert train_main(["--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trainer_state.pt is corrupt: its sha256 does not match" in err


# ------------------------------------------------------------------ metrics on resume
def _lines(run_dir):
    return (run_dir / "metrics.jsonl").read_text().splitlines()


def test_resume_rewrites_metrics_from_the_checkpoint(copy):
    (copy / "latest").write_text("checkpoint-000001\n")
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 2, "reward/mean": 0.5')  # torn by a kill mid-write
    t = resume(copy)
    assert [json.loads(x)["iteration"] for x in _lines(copy)] == [1]
    t.fit()
    assert [json.loads(x)["iteration"] for x in _lines(copy)] == [1, 2, 3]


def test_resume_of_a_run_without_checkpoint_starts_it_again(tmp_path):
    t = trainer(tmp_path / "a", ["train.iterations=2", "train.save_every=5"])
    t.train_iteration = stop_after(t, 1)  # killed in iteration 2, before any checkpoint
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert not list((tmp_path / "a").glob("checkpoint-*")) and len(_lines(tmp_path / "a")) == 1
    cfg = load_config(None, FAST + [f"train.output_dir={tmp_path / 'a'}", "train.iterations=2",
                                    "train.save_every=5"])
    again = Trainer(cfg, task=toy_task(), policy=tiny(0), progress=False, evaluate=False, resume=tmp_path / "a")
    assert again.iteration == 0 and _lines(tmp_path / "a") == []
    again.fit()
    full = trainer(tmp_path / "b", ["train.iterations=2", "train.save_every=5"])
    full.fit()
    for k, v in full.policy.state_dict().items():
        assert torch.equal(v, again.policy.state_dict()[k]), k
    assert [json.loads(x)["iteration"] for x in _lines(tmp_path / "a")] == [1, 2]


def test_a_new_run_never_appends_to_an_old_one(run, tmp_path, capsys):
    with pytest.raises(FileExistsError, match="already holds a run .*--resume"):
        trainer(run, ["train.iterations=2"])
    assert train_main([f"train.output_dir={run}", "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    t = trainer(tmp_path, ["train.iterations=2", "train.save_every=1"])
    t.fit()
    with torch.no_grad():
        t.policy.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"refusing to checkpoint.*lm_head.weight"):
        t.save()
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-000002"


def test_eval_resolves_run_checkpoint_and_policy_dirs(run, tmp_path):
    ck = run / "checkpoint-000002"
    assert resolve_policy_dir(run) == (ck / "policy", f"the latest checkpoint of run {run} (checkpoint-000002)")
    assert resolve_policy_dir(ck) == (ck / "policy", f"checkpoint {ck}")
    assert resolve_policy_dir(ck / "policy") == (ck / "policy", f"the policy of checkpoint {ck}")
    shutil.copytree(run, tmp_path / "no-latest")  # killed between a checkpoint's rename and `latest`
    (tmp_path / "no-latest" / "latest").unlink()
    assert resolve_policy_dir(tmp_path / "no-latest")[0] == tmp_path / "no-latest" / "checkpoint-000002" / "policy"
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.yaml").write_text("train: {}\n")
    with pytest.raises(CheckpointError, match="holds no checkpoint yet"):
        resolve_policy_dir(tmp_path / "fresh")
