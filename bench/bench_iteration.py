"""One default training iteration of ``python -m unigrpo.train`` (the shipped model
on the shapes task: 4 prompts x 8 rounds, K = 10, two minibatches of 16), no
evaluation, with the time split into rollout and update.

``defaults``: as ``python -m unigrpo.train`` runs (fp32 on CPU; each minibatch's
teacher-forced text pass serving both the text loss and the image context,
``ShapesModel.text_and_image_context``); ``bf16``: the same with
``train.bf16_autocast=true`` (bf16 autocast where the CPU has AMX or AVX-512 BF16, else
it is the defaults again: ``extra_info`` says which ran); ``two passes``: the defaults with
the interface's default context, a text forward and a separate image-context pass. Same
seed, in one run."""

import time

import pytest
import torch
from benchutil import DEVICE

from unigrpo.train import Trainer, load_config


@pytest.mark.parametrize("mode", ["defaults", "bf16", "two passes"])
def bench_train_iteration(benchmark, tmp_path, mode):
    cfg = load_config(None, [f"train.output_dir={tmp_path}", f"model.device={DEVICE}"]
                      + (["train.bf16_autocast=true"] if mode == "bf16" else []))
    trainer = Trainer(cfg, progress=False, evaluate=False)
    if mode == "two passes":  # a text forward, then the context from a pass of its own
        policy = trainer.policy
        one_pass = type(policy).text_and_image_context
        policy.text_and_image_context = lambda ids, mask: (policy.text_forward(ids, mask),
                                                           one_pass(policy, ids, mask)[1])
    trainer.train_iteration()  # warm-up: allocator, lazy init
    split = {"rollout": [], "total": []}

    def one():
        t = time.perf_counter()
        m = trainer.train_iteration()
        split["total"].append(time.perf_counter() - t)
        split["rollout"].append(32 / m["train/episodes_per_s"])

    benchmark.group = "train iteration (defaults, shapes task)"
    benchmark.pedantic(one, rounds=5, iterations=1)
    benchmark.extra_info["rollout_s"] = round(sum(split["rollout"]) / len(split["rollout"]), 3)
    benchmark.extra_info["update_s"] = round((sum(split["total"]) - sum(split["rollout"])) / len(split["total"]), 3)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["bf16_autocast"] = trainer.bf16
