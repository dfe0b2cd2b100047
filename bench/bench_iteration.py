"""One default training iteration of ``python -m unigrpo.train`` (the shipped model
on the shapes task: 4 prompts x 8 rounds, K = 10, two minibatches of 16), no
evaluation, with the time split into rollout and update.

``one pass``: each minibatch's teacher-forced text pass serves both the text loss
and the image context (``ShapesModel.text_and_image_context``); ``two passes``:
the interface's default, a text forward and a separate image-context pass (what
the trainer did before). Same seed, same rounds, in one run."""

import time

import pytest
import torch
from benchutil import DEVICE

from unigrpo.train import Trainer, load_config


@pytest.mark.parametrize("mode", ["one pass", "two passes"])
def bench_train_iteration(benchmark, tmp_path, mode):
    cfg = load_config(None, [f"train.output_dir={tmp_path}", f"model.device={DEVICE}"])
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
