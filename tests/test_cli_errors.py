"""Every CLI turns an expected failure into exit code 2 and one line naming the
problem (the key, flag or file), never a traceback."""

import pytest
import torch

from unigrpo.shapes.ablate import main as ablate_main
from unigrpo.shapes.eval import main as eval_main
from unigrpo.shapes.sft import main as sft_main
from unigrpo.train.__main__ import main as train_main
from unigrpo.train.config import help_text

MAINS = {"train": train_main, "eval": eval_main, "sft": sft_main, "ablate": ablate_main}

CASES = [
    # train: config values, each refused before any work, naming the key
    ("train", ["rollout.num_generations=1"], "rollout.num_generations must be >= 2 for training"),
    ("train", ["rollout.noise_level=0"], "rollout.noise_level must be > 0 while loss.train_image is true"),
    ("train", ["loss.epsilon=1.5"], "loss.epsilon must be in [0, 1), got 1.5"),
    ("train", ["loss.epsilon=nan"], "loss.epsilon must be in [0, 1), got nan"),
    ("train", ["loss.epsilon_high=-0.1"], "loss.epsilon_high must be >= 0, got -0.1"),
    ("train", ["loss.clip_range=0"], "loss.clip_range must be > 0"),
    ("train", ["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
    ("train", ["optim.lr=inf"], "optim.lr must be > 0, got inf"),
    ("train", ["optim.lr=-1e-4"], "optim.lr must be > 0"),
    ("train", ["optim.betas=[0.9,1.0]"], "optim.betas must be each value in [0, 1), got (0.9, 1.0)"),
    ("train", ["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0"),
    ("train", ["optim.warmup_steps=-1"], "optim.warmup_steps must be >= 0, got -1"),
    ("train", ["optim.max_grad_norm=0"], "optim.max_grad_norm must be > 0"),
    ("train", ["train.iterations=0"], "train.iterations must be >= 1"),
    ("train", ["task.heldout_fraction=1"], "task.heldout_fraction must be in [0, 1)"),
    ("train", ["rollout.top_p=0"], "rollout.top_p must be in (0, 1]"),
    ("train", ["rollout.temperature=-1"], "rollout.temperature must be >= 0"),
    ("train", ["loss.beta_v=[1"], "loss.beta_v='[1' is not a value"),
    ("train", ["loss.nope=1"], "unknown config key 'loss.nope'"),
    ("train", ["model.device=tpu"], "model.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("train", ["--config", "{tmp}/missing.yaml"], "config file {tmp}/missing.yaml does not exist"),
    ("train", ["--config", "{tmp}/bad.yaml"], "config file {tmp}/bad.yaml is not valid YAML at line 3, column 1"),
    ("train", ["--config", "{tmp}/empty.yaml"], "config file {tmp}/empty.yaml is empty"),
    ("train", ["--resume", "{tmp}/no-such-run"], "--resume {tmp}/no-such-run: no such run directory"),
    ("train", ["train.output_dir={tmp}/a-file/run"], "{tmp}/a-file"),
    ("train", ["--bogus"], "unrecognized arguments: --bogus"),
    # eval
    ("eval", ["--checkpoint", "{tmp}/nowhere"], "{tmp}/nowhere does not exist"),
    ("eval", ["--checkpoint", "{tmp}/fresh-run"], "run {tmp}/fresh-run holds no checkpoint yet"),
    ("eval", ["--checkpoint", "{tmp}"], "{tmp} is not a checkpoint: no config.json"),
    ("eval", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("eval", ["--temperature", "-1"], "--temperature must be >= 0"),
    ("eval", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("eval", ["--steps", "two"], "argument --steps: invalid int value: 'two'"),
    # sft
    ("sft", ["--out", "{tmp}/s", "--lr", "0"], "--lr must be > 0, got 0.0"),
    ("sft", ["--out", "{tmp}/s", "--drop-reasoning", "2"], "--drop-reasoning must be in [0, 1], got 2.0"),
    ("sft", ["--out", "{tmp}/s", "--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("sft", ["--out", "{tmp}/s", "--hidden-size", "30"], "config.hidden_size must be a multiple of 4"),
    ("sft", ["--out", "{tmp}/a-file/s"], "{tmp}/a-file"),
    ("sft", ["--steps", "2"], "the following arguments are required: --out"),
    # ablate
    ("ablate", ["--iterations", "0"], "--iterations must be >= 1, got 0"),
    ("ablate", ["--variants", "nope"], "--variants: unknown ['nope']"),
    ("ablate", ["--out", "{tmp}/ab", "loss.epsilon=2"], "loss.epsilon must be in [0, 1), got 2.0"),
]


@pytest.mark.parametrize("cli, argv, message", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_expected_failures_exit_2_with_one_line(tmp_path, capsys, cli, argv, message):
    (tmp_path / "bad.yaml").write_text("loss:\n  beta_v: 1\n: nope: [\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "fresh-run").mkdir()
    (tmp_path / "fresh-run" / "config.yaml").write_text("train: {}\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = MAINS[cli](argv + (["--no-progress"] if cli == "train" else []))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("evaluating ")]
    assert len(err) == 1, err
    assert err[0].startswith(f"python -m unigrpo.{cli}: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused(capsys):
    assert train_main(["model.device=cuda", "--no-progress"]) == 2
    assert "model.device='cuda', but this machine has no CUDA device" in capsys.readouterr().err


def test_help_lists_every_key_with_its_range():
    text = help_text()
    for line in ("rollout.num_generations = 8  (>= 1;", "loss.epsilon = 0.2  (in [0, 1);",
                 "optim.lr = 0.0001  (> 0;", "optim.betas = (0.9, 0.999)  (in [0, 1);", "task.eval_steps = 40  (>= 1;"):
        assert line in text, line
