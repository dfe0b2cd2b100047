"""``sharded_sampling``: two processes drawing the chunks of a ``sample_images`` call
between them get exactly the images, reasoning and flags one process draws."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from tiny_runs import tiny
    from unigrpo.rollout import sample_images, sharded_sampling
    from unigrpo.train.distributed import shutdown

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    texts = ["a red circle", "three triangles", "a blue square", "two squares", "a green circle"]
    with sharded_sampling(dist.get_rank(), dist.get_world_size()):
        images, reasoning, truncated = sample_images(tiny(0), texts, steps=2, max_new_tokens=5, seed=7, batch_size=2)
    if dist.get_rank() == 0:
        torch.save({"images": images, "reasoning": reasoning, "truncated": truncated}, sys.argv[1])
    shutdown()
""")


def test_two_ranks_draw_what_one_process_draws(tmp_path):
    from tiny_runs import tiny

    from unigrpo.rollout import sample_images

    (tmp_path / "shard.py").write_text(SCRIPT)
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(tmp_path / "shard.py"), str(tmp_path / "two.pt")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt")
    texts = ["a red circle", "three triangles", "a blue square", "two squares", "a green circle"]
    images, reasoning, truncated = sample_images(tiny(0), texts, steps=2, max_new_tokens=5, seed=7, batch_size=2)
    # five texts in chunks of 2: rank 0 draws chunks 0 and 2, rank 1 chunk 1
    assert torch.equal(two["images"], images) and two["reasoning"] == reasoning and two["truncated"] == truncated
