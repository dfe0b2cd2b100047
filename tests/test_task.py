"""The library / world boundary, the task registry, and the generic ``prompts`` task."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from toy_policy import ToyPolicy

from unigrpo.policy import POLICIES
from unigrpo.rewards import REWARDS, WeightedRewards, rewards_from_spec
from unigrpo.task import TASKS, ModelConfig, TaskConfig, build_task
from unigrpo.tasks import PromptsTask, read_prompts
from unigrpo.train import Trainer, load_config
from unigrpo.train.__main__ import main as train_main

TESTS = Path(__file__).resolve().parent
FAST = ["train.prompts_per_iteration=2", "rollout.num_generations=2", "rollout.num_inference_steps=2",
        "rollout.max_reasoning_tokens=4", "train.minibatch_size=4", "optim.warmup_steps=1",
        "task.eval_steps=2", "task.eval_size=2"]

BOUNDARY = textwrap.dedent("""
    import importlib.abc, sys

    class NoWorld(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "unigrpo.shapes" or name.startswith("unigrpo.shapes."):
                raise ImportError(f"{name} is made unimportable by this test")

    sys.meta_path.insert(0, NoWorld())
    import unigrpo, unigrpo.ops, unigrpo.policy, unigrpo.sampling, unigrpo.cuda_graphs, unigrpo.schedule
    import unigrpo.rollout, unigrpo.rewards, unigrpo.task, unigrpo.tasks, unigrpo.train, unigrpo.images
    sys.path.insert(0, sys.argv[1])
    from toy_policy import ToyPolicy
    from unigrpo.policy import POLICIES
    from unigrpo.task import TaskConfig, build_task
    from unigrpo.train import Trainer, load_config

    POLICIES.register("toy", ToyPolicy.load)
    cfg = load_config(None, ["task=prompts", f"task.file={sys.argv[2]}", "task.reward=brightness",
                             "task.heldout_fraction=0.25", "model.type=toy", "model.checkpoint=new",
                             f"train.output_dir={sys.argv[3]}", "train.iterations=2", "train.eval_every=2"]
                      + sys.argv[4:])
    history = Trainer(cfg, progress=False).fit()
    assert "eval/overall" in history[0] and "eval/overall" in history[-1], history[-1]
    assert "reward/brightness_mean" in history[-1], history[-1]
    loaded = sorted(m for m in sys.modules if m.startswith("unigrpo.shapes"))
    assert not loaded, loaded
    try:
        build_task(TaskConfig(name="shapes"))
    except ValueError as e:
        print("asking for the world:", e)
    print("trained without the world")
""")


def test_library_trains_without_the_builtin_world(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red circle\n\nthree triangles\na blue square\ntwo squares\n")
    out = subprocess.run([sys.executable, "-c", BOUNDARY, str(TESTS), str(prompts), str(tmp_path / "run"), *FAST],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained without the world" in out.stdout
    assert "task 'shapes' is registered by 'unigrpo.shapes.task:ShapesTask', which cannot be imported" in out.stdout
    assert (tmp_path / "run" / "eval-000002" / "samples.png").exists()


def test_library_sources_never_import_the_world():
    """The static half of the boundary: no library module names the world in an import."""
    import unigrpo

    root = Path(unigrpo.__file__).parent
    library = [p for p in root.rglob("*.py") if "shapes" not in p.relative_to(root).parts
               and p.name not in ("eval.py", "sft.py", "ablate.py")]  # the world's CLI entry points
    assert len(library) > 20
    imports = re.compile(r"^\s*(from\s+(\.+|unigrpo\.)shapes\b|import\s+unigrpo\.shapes\b)", re.M)
    offenders = [str(p.relative_to(root)) for p in library if imports.search(p.read_text())]
    assert offenders == []
    assert imports.search("    from ..shapes.model import X") and imports.search("import unigrpo.shapes.eval")


def test_task_registry_and_errors(tmp_path):
    assert {"shapes", "prompts"} <= set(TASKS.names())
    y = tmp_path / "c.yaml"
    y.write_text("task: prompts\n")  # YAML's short form, like task=NAME on the command line
    assert load_config(y).task.name == "prompts" and load_config(None, ["task=shapes"]).task.name == "shapes"
    with pytest.raises(ValueError, match="unknown task 'nope'; registered: .*prompts.*shapes"):
        build_task(TaskConfig(name="nope"))
    with pytest.raises(ValueError, match="task 'no_such_module:Task': cannot import 'no_such_module'"):
        build_task(TaskConfig(name="no_such_module:Task"))
    with pytest.raises(ValueError, match="task.file is required for task prompts"):
        build_task(TaskConfig(name="prompts", reward="brightness"))
    with pytest.raises(ValueError, match="task.reward must be one of .*for task shapes"):
        build_task(TaskConfig(name="shapes", reward="brightness"))
    with pytest.raises(ValueError, match="task.file is not used by task shapes"):
        build_task(TaskConfig(name="shapes", file="x.txt"))
    with pytest.raises(ValueError, match="task.heldout_fraction must be in"):
        load_config(None, ["task.heldout_fraction=1.5"])
    assert train_main(["task=nope", "--no-progress"]) == 2


def test_shapes_task_is_the_default():
    task = build_task(load_config().task)
    assert task.name == "shapes" and task.mode == "shaped"
    assert set(task.rewards().rewards[i][0] for i in range(2)) == {"shaped", "strict"}
    train, held = task.train_prompts(), task.heldout_prompts()
    assert len(train) > 500 and len(held) > 50
    assert {p.text for p in train}.isdisjoint({p.text for p in held})
    assert train[0].metadata.text == train[0].text  # the verifier's Prompt rides along as metadata


def test_read_prompts_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# header\n a red circle \n\nthree triangles\n")
    assert [(p.text, p.metadata) for p in read_prompts(txt)] == [("a red circle", {}), ("three triangles", {})]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a red circle", "category": "single"}\n{"text": "two squares", "n": 2}\n')
    got = read_prompts(jl)
    assert [(p.text, p.metadata) for p in got] == [("a red circle", {"category": "single"}), ("two squares", {"n": 2})]
    jl.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"task.file: .*p.jsonl:2 is not valid JSON"):
        read_prompts(jl)
    jl.write_text('{"caption": "no prompt key"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1 needs a non-empty string \"prompt\""):
        read_prompts(jl)
    with pytest.raises(ValueError, match="task.file: no such file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(ValueError, match="must be a .txt"):
        read_prompts(tmp_path / "p.csv")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_prompts_task_split_is_seeded_and_disjoint(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"prompt {i}" for i in range(20)))
    make = lambda seed: PromptsTask(TaskConfig(name="prompts", file=str(f), reward="brightness",  # noqa: E731
                                               heldout_fraction=0.25, split_seed=seed))
    a, b, c = make(0), make(0), make(1)
    assert len(a.heldout_prompts()) == 5 and len(a.train_prompts()) == 15
    assert a.heldout_prompts() == b.heldout_prompts() and a.heldout_prompts() != c.heldout_prompts()
    assert {p.text for p in a.train_prompts()}.isdisjoint(p.text for p in a.heldout_prompts())
    held = tmp_path / "h.txt"
    held.write_text("held one\n")
    d = PromptsTask(TaskConfig(name="prompts", file=str(f), heldout_file=str(held), reward="brightness"))
    assert len(d.train_prompts()) == 20 and [p.text for p in d.heldout_prompts()] == ["held one"]


def test_rewards_from_spec_weights_and_errors():
    images = torch.full((2, 4, 4, 3), 51, dtype=torch.uint8)
    r = rewards_from_spec("brightness:2,tests_toy_reward")
    out = r(images, ["a", "b"], [{}, {}])
    assert torch.allclose(out.total, torch.full((2,), 2 * 0.2 + 1.0))
    assert set(out.components) == {"brightness", "tests_toy_reward"}
    with pytest.raises(ValueError, match="task.reward: unknown reward 'nope'; registered: .*brightness"):
        rewards_from_spec("nope")
    with pytest.raises(ValueError, match="task.reward must name at least one reward"):
        rewards_from_spec(" , ")
    r = rewards_from_spec("test_task:constant_one:0.5")  # package.module:factory, then the weight
    assert torch.allclose(r(images, ["a", "b"], [{}, {}]).total, torch.full((2,), 0.5))


def constant_one():
    return lambda images, prompts, metadata: torch.ones(images.shape[0])


REWARDS.register("tests_toy_reward", constant_one)


def test_prompts_task_trains_the_builtin_model_from_the_cli(tmp_path):
    """task=prompts with a .jsonl file and the built-in model type, as a user types it."""
    from unigrpo.shapes.model import ShapesConfig, ShapesModel

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny"
    ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=48, timestep_embed_dim=16)).save_pretrained(ckpt)
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": t, "category": c}) + "\n" for t, c in [
        ("a red circle", "single"), ("three triangles", "counting"), ("a blue square", "single"),
        ("two squares", "counting"), ("a green circle", "single"), ("a red triangle", "single")]))
    run = tmp_path / "run"
    code = train_main(["task=prompts", f"task.file={f}", "task.reward=brightness", "task.heldout_fraction=0.34",
                       f"model.checkpoint={ckpt}", f"train.output_dir={run}", "train.iterations=2",
                       "train.eval_every=2", "--no-progress", *FAST])
    assert code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "eval/overall" in rows[0] and "eval/overall" in rows[-1]
    assert any(k.startswith("reward_by_category/") for k in rows[1])
    assert any(k.startswith("eval/by_category/") for k in rows[-1])
    results = json.loads((run / "eval-000002" / "results.json").read_text())
    assert len(results["samples"]) == 2 and (run / "eval-000002" / "samples.png").exists()
    assert results["metrics"]["overall"] == pytest.approx(rows[-1]["eval/overall"])


def test_prompts_task_evaluates_with_guidance_when_asked():
    from unigrpo.rollout.inference import sample_images
    from unigrpo.task import TaskConfig

    policy = ToyPolicy()
    rewards = WeightedRewards([("bright", REWARDS.get("brightness")(), 1.0)])

    def overall(scale):
        cfg = TaskConfig(name="prompts", eval_steps=3, eval_guidance_scale=scale)
        return PromptsTask(cfg, prompts=["a", "bb"], heldout=["dd", "e"], rewards=rewards).evaluate(policy, None)
    images = sample_images(policy, ["dd", "e"], steps=3, guidance_scale=5.0)[0]
    assert overall(5.0)["overall"] == pytest.approx(float(rewards(images, ["dd", "e"], [{}, {}]).total.mean()))
    assert overall(5.0)["overall"] != overall(1.0)["overall"]


def test_policy_registry_loads_the_builtin_checkpoint():
    policy = POLICIES.get("shapes")(ModelConfig(), "cpu")  # the default checkpoint: builtin:shapes-sft
    assert policy.num_parameters() > 1_000_000
    with pytest.raises(ValueError, match="model.checkpoint 'builtin:nope': unknown"):
        POLICIES.get("shapes")(ModelConfig(checkpoint="builtin:nope"), "cpu")


def test_toy_policy_trains_in_process(tmp_path):
    task = PromptsTask(prompts=["a", "bb", "ccc"], heldout=["dd"],
                       rewards=WeightedRewards([("bright", REWARDS.get("brightness")(), 1.0)]))
    cfg = load_config(None, FAST + ["train.iterations=1", f"train.output_dir={tmp_path}"])
    m = Trainer(cfg, task=task, policy=ToyPolicy(), progress=False, evaluate=False).train_iteration()
    assert abs(m["first_minibatch/text_ratio_mean"] - 1) < 1e-5 and abs(m["first_minibatch/image_ratio_mean"] - 1) < 1e-5


def test_category_means_groups_by_the_category_as_text():
    from unigrpo.task import category_means

    got = category_means([1.0, 0.0, 0.5, 0.25], [2, 2, None, "b"], "by/")
    assert got == {"by/2": 0.5, "by/b": 0.25}  # a .jsonl category may be a number; None belongs to none
    assert category_means([1.0], [None], "by/") == {}
