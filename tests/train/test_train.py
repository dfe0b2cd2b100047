import json
import math

import pytest
import torch

from tiny_runs import FAST, brightness, stop_after, tiny, toy_task, trainer

from unigrpo.integrity import CheckpointError
from unigrpo.train import Trainer, group_advantages, load_config
from unigrpo.train.__main__ import main as train_main
from unigrpo.train.config import valid_keys

# ---------------------------------------------------------------- advantages
def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.5, 0.3, 0.3, 0.3])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    a = group_advantages(r, g, "group")
    assert torch.allclose(a[:3], (r[:3] - 0.5) / (r[:3].std() + 1e-4), atol=1e-5)
    assert bool((a[3:] == 0).all())  # equal rewards: exactly zero, no NaN
    assert torch.allclose(group_advantages(r, g, "none")[:3], r[:3] - 0.5)
    assert group_advantages(torch.tensor([0.0, 100.0]), torch.tensor([0, 0]), "none", adv_clip_max=5).tolist() \
        == [-5.0, 5.0]
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(r, g, "std")


# -------------------------------------------------------------------- config
def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(None, ["loss.beta_v=0.01", "optim.lr=3e-4", "rollout.num_generations=16",
                             "loss.epsilon_high=0.28", "loss.train_text=false"])
    assert cfg.loss.beta_v == 0.01 and cfg.optim.lr == 3e-4 and cfg.rollout.num_generations == 16
    assert cfg.loss.epsilon_high == 0.28 and cfg.loss.train_text is False
    with pytest.raises(KeyError, match="unknown config key 'loss.bta_v'; valid keys: .*loss.beta_v"):
        load_config(None, ["loss.bta_v=1"])
    with pytest.raises(ValueError, match="rollout.num_generations must be of type int"):
        load_config(None, ["rollout.num_generations=two"])
    with pytest.raises(ValueError, match="loss.image_penalty must be one of"):
        load_config(None, ["loss.image_penalty=kl"])
    with pytest.raises(KeyError, match="unknown config key 'train.reward_mode'"):  # now task.reward
        load_config(None, ["train.reward_mode=dense"])
    assert load_config(None, ["task=prompts", "task.reward=brightness:2"]).task.name == "prompts"
    with pytest.raises(ValueError, match="loss.loss_type must be one of .*'dapo', 'bnpo', 'grpo', 'dr_grpo'"):
        load_config(None, ["loss.loss_type=token_mean"])
    with pytest.raises(ValueError, match="optim.lr_scheduler_type must be one of"):
        load_config(None, ["optim.lr_scheduler_type=step"])
    y = tmp_path / "c.yaml"
    y.write_text("loss:\n  beta_v: 0.5\nrollout:\n  noise_level: 0.8\n")
    cfg = load_config(y, ["loss.beta_v=0.25"])
    assert cfg.loss.beta_v == 0.25 and cfg.rollout.noise_level == 0.8
    y.write_text("loss:\n  nope: 1\n")
    with pytest.raises(KeyError, match="loss.nope"):
        load_config(y)
    assert train_main(["loss.nope=1"]) == 2
    assert train_main(["--no-progress", "loss.beta_v=1", "--config", str(y), "loss.nope=1"]) == 2  # intermixed
    assert train_main(["--resume", str(tmp_path / "not-a-run")]) == 2
    assert "loss.beta_v" in valid_keys() and "rollout.noise_level" in valid_keys()


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("guard", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_first_inner_update_has_ratio_one(tmp_path, monkeypatch, guard, bf16):
    # bf16: the autocast path on any CPU (where bf16 is emulated it is only slower)
    monkeypatch.setattr("unigrpo.precision.native_bf16", lambda device: (True, "forced by the test"))
    t = trainer(tmp_path, ["train.iterations=1", f"loss.grpo_guard={str(guard).lower()}",
                           "train.num_inner_epochs=2"] + (["train.bf16_autocast=true"] if bf16 else []))
    assert t.bf16 is bf16
    m = t.train_iteration()
    # in bf16 the rollout's token-by-token decode and the loss's teacher-forced pass round
    # the logits differently (up to |logit| x 2^-9), so the text ratio is 1 only to ~1e-4;
    # the image steps are recomputed exactly as the rollout computed them
    assert abs(m["first_minibatch/text_ratio_mean"] - 1) < (1e-3 if bf16 else 1e-5)
    assert abs(m["first_minibatch/image_ratio_mean"] - 1) < 1e-5
    assert m["image/ratio_mean"] != 1  # later minibatches see the moved policy


def test_grpo_guard_without_the_rollouts_noise_is_a_named_error(tmp_path):
    from tiny_runs import PROMPTS

    from unigrpo.rollout import generate_episodes
    from unigrpo.train.losses import TokenNorm, joint_loss

    t = trainer(tmp_path, ["loss.grpo_guard=true"])
    batch = generate_episodes(t.policy, PROMPTS[:1], [{}], t.rewards, t.cfg.rollout)  # keep_noise not asked
    adv = group_advantages(batch.rewards, batch.group_ids, "group", 5.0)
    with pytest.raises(ValueError, match="loss.grpo_guard needs the rollout's step noise"):
        joint_loss(t.policy, t.ref, batch, adv, t.cfg.loss, TokenNorm())


def test_few_iterations_improve_a_toy_reward(tmp_path):
    t = trainer(tmp_path, ["train.iterations=8", "loss.clip_range=0.01", "loss.beta_v=0", "loss.train_text=false",
                           "optim.lr=1e-2", "train.num_inner_epochs=2"])
    h = t.fit()
    r = [row["reward/bright_mean"] for row in h]
    assert sum(r[-3:]) / 3 > sum(r[:2]) / 2 + 0.02, r
    assert (tmp_path / "curves.png").exists() and (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "config.yaml").exists()


def test_known_initial_evaluation_is_recorded_not_rerun(tmp_path, monkeypatch):
    tags = []
    monkeypatch.setattr(Trainer, "evaluate", lambda self, tag: tags.append(tag) or {"eval/overall": 0.25})
    t = trainer(tmp_path, ["train.iterations=1"])
    t.do_eval = True
    h = t.fit(initial_eval={"eval/overall": 0.5})
    assert tags == ["000001"] and h[0] == {"iteration": 0, "eval/overall": 0.5}
    assert h[-1]["eval/overall"] == 0.25 and h[-1]["reward/mean"] == h[-1]["reward/bright_mean"]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lr_decays_to_zero_over_the_run(tmp_path, kind):
    from unigrpo.train.config import optimizer_steps_per_iteration

    t = trainer(tmp_path, ["train.iterations=3", f"optim.lr_scheduler_type={kind}", "optim.warmup_steps=1",
                           "train.num_inner_epochs=2", "train.minibatch_size=5"])
    assert optimizer_steps_per_iteration(t.cfg) == 8  # 16 rounds: 4 minibatches of <= 5, twice
    lrs = [row["train/lr"] for row in t.fit() if "train/lr" in row]
    assert 1e-4 > lrs[0] > lrs[1] > lrs[2] == pytest.approx(0.0, abs=1e-12)  # logged after each iteration
    assert t.counters["optimizer_steps"] == 24


@pytest.mark.parametrize("context_grad", [True, False])
def test_image_context_grad_decides_whether_image_losses_train_the_text_encoding(tmp_path, context_grad):
    t = trainer(tmp_path, ["train.iterations=1", "loss.train_text=false", "optim.lr=1e-2", "optim.warmup_steps=0",
                           f"loss.image_context_grad={str(context_grad).lower()}"])
    emb, head = t.policy.embed_tokens.weight.detach().clone(), t.policy.velocity_head.weight.detach().clone()
    t.train_iteration()
    assert not torch.equal(head, t.policy.velocity_head.weight)  # the image path trains either way
    assert torch.equal(emb, t.policy.embed_tokens.weight) != context_grad


def _weights(policy):
    return {k: v.clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_resume_continues_exactly(tmp_path, ema):
    common = ["train.iterations=4", "train.save_every=2", "optim.lr=3e-3", f"train.ema_decay={ema}"]
    full = trainer(tmp_path / "full", common)
    full_hist = full.fit()
    part = trainer(tmp_path / "part", common)  # the same run (same lr schedule), stopped at 2
    part.train_iteration = stop_after(part, 2)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    cfg = load_config(None, FAST + [f"train.output_dir={tmp_path / 'part'}"] + common)
    resumed = Trainer(cfg, task=toy_task(), policy=tiny(0), progress=False, evaluate=False,
                      resume=tmp_path / "part")
    assert resumed.iteration == 2
    hist = resumed.fit()
    for k, v in _weights(full.policy).items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    if ema:
        assert all(torch.equal(a, b) for a, b in zip(full.ema.shadow, resumed.ema.shadow))
    drop = ("train/iteration_s", "train/episodes_per_s")
    strip = lambda h: [{k: v for k, v in row.items() if k not in drop} for row in h]  # noqa: E731
    assert strip(hist) == strip(full_hist)
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2, 3, 4]


def test_ema_averages_the_trained_weights_and_the_evaluation_uses_it(tmp_path):
    from unigrpo.train.ema import ParameterEMA

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    ema = ParameterEMA([p], 0.9)
    for step in range(1, 4):
        p.data.fill_(step)
        ema.update()
    expected = 0.9**3 * 0 + 0.1 * (0.9**2 * 1 + 0.9 * 2 + 3)  # fp32 shadow: 0.561 is not a bf16 number
    assert ema.shadow[0].dtype == torch.float32 and ema.shadow[0][0].item() == pytest.approx(expected, rel=1e-6)
    with ema.applied():
        assert p[0].item() == pytest.approx(expected, rel=1e-2)
    assert torch.equal(p.data, torch.full((3,), 3.0, dtype=torch.bfloat16))  # restored
    with pytest.raises(ValueError, match="train.ema_decay must be in"):
        ParameterEMA([p], 1.0)

    cfg = load_config(None, FAST + [f"train.output_dir={tmp_path}", "train.iterations=2", "train.ema_decay=0.5",
                                    "optim.lr=1e-2"])
    t = Trainer(cfg, task=toy_task(), policy=tiny(0), progress=False)
    seen = []
    t.task.evaluate = lambda policy, out: seen.append(_weights(policy)) or {"overall": 0.0}
    t.fit()
    trained = _weights(t.policy)
    params = dict(t.policy.named_parameters())
    name = next(n for n, q in params.items() if q.requires_grad)
    index = [q for q in params.values() if q.requires_grad].index(params[name])
    assert torch.equal(seen[-1][name], t.ema.shadow[index].to(seen[-1][name].dtype))  # evaluated: the EMA
    assert not torch.equal(seen[-1][name], trained[name])  # ...which is not the trained weights
    assert t.ema.updates == t.counters["optimizer_steps"]
    # a run that saved no EMA cannot be resumed with one (its average would start from nothing)
    plain = tmp_path / "plain"
    trainer(plain, ["train.iterations=1"]).fit()
    cfg = load_config(None, FAST + [f"train.output_dir={plain}", "train.iterations=2", "train.ema_decay=0.5"])
    with pytest.raises(CheckpointError, match="train.ema_decay is on but the checkpoint holds no EMA"):
        Trainer(cfg, task=toy_task(), policy=tiny(0), progress=False, evaluate=False, resume=plain)


def test_checkpoint_is_atomic_and_complete(tmp_path):
    t = trainer(tmp_path, ["train.iterations=2", "train.save_every=1"])
    t.fit()
    latest = (tmp_path / "latest").read_text().strip()
    assert latest == "checkpoint-000002"
    ck = tmp_path / latest
    assert {p.name for p in ck.iterdir()} >= {"policy", "trainer_state.pt", "config.yaml"}
    assert (ck / "policy" / "model.safetensors").exists()
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        trainer(tmp_path / "empty", [], resume=tmp_path / "nowhere")


def test_nonfinite_reward_and_loss_skip_the_update(tmp_path, monkeypatch):
    calls = {"n": 0}

    def flaky(images, prompts, metadata):
        calls["n"] += 1
        out = brightness(images, prompts, metadata)
        if calls["n"] == 2:
            out[0] = float("nan")
        return out

    t = trainer(tmp_path, ["train.iterations=3", "train.save_every=1"], reward=flaky)
    h = t.fit()
    assert t.counters["skipped_nonfinite_reward"] == 1 and "skipped" in h[1]
    from unigrpo.train import trainer as trainer_mod

    before = _weights(t.policy)
    real = trainer_mod.joint_loss
    monkeypatch.setattr(trainer_mod, "joint_loss",
                        lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1]))
    t.cfg.train.iterations = 4
    t.fit()
    assert t.counters["skipped_nonfinite_loss"] >= 1
    for k, v in t.policy.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, before[k]), k
    assert not any(math.isnan(x) for x in [t.scheduler.get_last_lr()[0]])
