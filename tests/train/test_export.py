"""``python -m unigrpo.export``: a one-process checkpoint written out as a model directory
equals the policy the run ended with; bad arguments end in one line and exit code 2."""

import torch
from tiny_runs import tiny, toy_task

from unigrpo.export import main
from unigrpo.shapes.model import ShapesModel
from unigrpo.train import Trainer, load_config
from unigrpo.train.checkpointing import POLICY


def _run(tmp_path, name, *extra):
    cfg = load_config(None, ["train.prompts_per_iteration=4", "rollout.num_generations=2", "train.minibatch_size=8",
                             "rollout.num_inference_steps=2", "rollout.max_reasoning_tokens=4", "train.iterations=1",
                             "optim.warmup_steps=0", f"model.checkpoint={tmp_path / 'start'}",
                             f"train.output_dir={tmp_path / name}", *extra])
    t = Trainer(cfg, task=toy_task(), progress=False, evaluate=False)
    t.fit()
    return t


def test_export_writes_the_trained_policy_and_refuses_bad_arguments(tmp_path, capsys):
    tiny(0).save_pretrained(tmp_path / "start")
    t = _run(tmp_path, "run", "train.ema_decay=0.5")
    assert main([str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    exported = ShapesModel.from_pretrained(tmp_path / "out").state_dict()
    trained = t.policy.state_dict()
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    start = tiny(0).state_dict()
    assert any(not torch.equal(exported[k], start[k]) for k in start)  # it trained
    assert (tmp_path / "run" / "checkpoint-000001" / POLICY).is_dir()
    # --ema: the run's average, the weights its evaluations used
    assert main([str(tmp_path / "run"), str(tmp_path / "ema"), "--ema"]) == 0
    averaged = ShapesModel.from_pretrained(tmp_path / "ema")
    shadow = iter(t.ema.shadow)
    for name, p in averaged.named_parameters():
        assert torch.equal(p, next(shadow)), name
    assert any(not torch.equal(a, b) for a, b in zip(averaged.parameters(), t.policy.parameters()))
    _run(tmp_path, "plain")
    capsys.readouterr()
    for args, says in (([str(tmp_path / "run"), str(tmp_path / "out")], "not an empty directory"),
                       ([str(tmp_path / "start"), str(tmp_path / "elsewhere")], "holds no checkpoint"),
                       ([str(tmp_path / "missing"), str(tmp_path / "elsewhere")], "missing"),
                       ([str(tmp_path / "plain"), str(tmp_path / "elsewhere"), "--ema"], "holds no EMA")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "elsewhere").exists()
