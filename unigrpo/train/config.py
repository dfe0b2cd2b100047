"""Training configuration: nested dataclasses, a YAML file, dotted overrides.

    python -m unigrpo.train loss.beta_v=0.01 rollout.num_generations=8 --config my.yaml
    python -m unigrpo.train task=prompts task.file=prompts.txt task.reward=brightness

``task=NAME`` is short for ``task.name=NAME``. Unknown keys and badly typed
values are rejected with the list of valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config_bounds import bounded, check_bounds, describe
from ..io import atomic_write_text
from ..rollout import RolloutConfig
from ..task import ModelConfig, TaskConfig
from .distributed import ParallelConfig
from .losses import LossConfig

LR_SCHEDULERS = ("constant_with_warmup", "linear", "cosine")


@dataclass
class OptimConfig:
    lr: float = bounded(1e-4, gt=0, help="peak learning rate (AdamW)")
    weight_decay: float = bounded(0.0, ge=0)
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1, help="AdamW's beta1, beta2")
    warmup_steps: int = bounded(5, ge=0, help="optimizer steps of linear warm-up")
    max_grad_norm: float = bounded(1.0, gt=0, help="gradient-norm clip")
    # transformers' schedulers, over all the run's optimizer steps (TRL's name and choices); on the
    # built-in task an unpenalised run peaked, then collapsed at a constant rate, held with cosine
    lr_scheduler_type: str = "cosine"


@dataclass
class LoopConfig:
    iterations: int = bounded(300, ge=1, help="~2-3 s each on 2 CPU cores")
    prompts_per_iteration: int = bounded(4, ge=1, help="x rollout.num_generations = rounds per iteration")
    num_inner_epochs: int = bounded(1, ge=1)
    minibatch_size: int = bounded(16, ge=1, help="rounds per minibatch")
    gradient_accumulation_steps: int = bounded(1, ge=1)
    seed: int = bounded(0, ge=0)
    output_dir: str = "runs/unigrpo"
    save_every: int = bounded(100, ge=1, help="iterations between checkpoints")
    eval_every: int = bounded(100, ge=1, help="iterations between held-out evaluations (task.eval_* set their size)")
    bf16_autocast: bool | None = field(default=None, metadata={"help": (
        "the rollout and the loss in bf16 autocast (on CUDA also FSDP's bf16 weights); null: on CUDA, "
        "fp32 on CPU; true: also on CPUs with AMX or AVX-512 BF16 (elsewhere fp32, said at start)")})
    ema_decay: float = bounded(0.0, ge=0, lt=1, help="EMA of the trained weights, used by the held-out "
                                                     "evaluations (0: off)")


def optimizer_steps_per_iteration(cfg: "TrainConfig") -> int:
    """Optimizer steps one iteration takes: its minibatches over the inner epochs,
    accumulated (a last partial accumulation still steps)."""
    t = cfg.train
    rounds = t.prompts_per_iteration * cfg.rollout.num_generations
    minibatches = t.num_inner_epochs * -(-rounds // t.minibatch_size)
    return -(-minibatches // t.gradient_accumulation_steps)


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        """Every section's ranges and choices, then what training needs across sections."""
        self.task.validate()
        self.model.validate()
        self.rollout.validate()
        self.loss.validate()
        check_bounds(self.optim, "optim")
        check_bounds(self.train, "train")
        self.parallel.validate()
        if self.optim.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(f"optim.lr_scheduler_type must be one of {LR_SCHEDULERS}, "
                             f"got {self.optim.lr_scheduler_type!r}")
        if not self.train.output_dir:
            raise ValueError("train.output_dir must name a directory")
        if self.rollout.num_generations < 2:
            raise ValueError(f"rollout.num_generations must be >= 2 for training (GRPO's advantages are "
                             f"relative to a group; one round per prompt has none), got {self.rollout.num_generations}")
        if self.loss.train_image and self.rollout.noise_level == 0:
            raise ValueError("rollout.noise_level must be > 0 while loss.train_image is true (the image loss "
                             "trains on the SDE steps' log-probs; 0 is the deterministic sampler), got 0")


def help_text() -> str:
    """Every key with its default and range, for ``--help``."""
    cfg = TrainConfig()
    return "\n".join(line for f in dataclasses.fields(cfg) for line in describe(getattr(cfg, f.name), f.name))


def valid_keys(obj: Any = None, prefix: str = "") -> list[str]:
    obj = TrainConfig() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        keys += valid_keys(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [prefix + f.name]
    return keys


def _coerce(key: str, value: Any, current: Any, annotation: Any) -> Any:
    """Parse/check ``value`` against the field's type (inferred from its annotation and default)."""
    if isinstance(value, str) and isinstance(current, str):
        return value  # text is text: a prompt with a colon is not a YAML mapping
    if isinstance(value, str) and value != "":
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"{key}={value!r} is not a value (a number, true/false, a word or a [list])") from None
    if isinstance(value, str) and isinstance(current, (int, float)) and not isinstance(current, bool):
        try:  # YAML reads "1e-4" as a string
            value = float(value) if isinstance(current, float) else int(value)
        except ValueError:
            pass
    args = typing.get_args(annotation) if not isinstance(annotation, str) else ()
    allows_none = current is None or type(None) in args or "None" in str(annotation)
    if value is None:
        if allows_none:
            return None
        raise ValueError(f"{key} cannot be null")
    target = type(current) if current is not None else next((a for a in args if a is not type(None)), str)
    if target is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false{', or null' if allows_none else ''}, got {value!r}")
        return value
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ValueError(f"{key} must be a list of {len(current)} numbers, got {value!r}")
        return tuple(float(x) for x in value)
    if not isinstance(value, target) or isinstance(value, bool) and target is not bool:
        raise ValueError(f"{key} must be of type {target.__name__}, got {value!r}")
    return value


def apply(cfg: TrainConfig, updates: dict[str, Any]) -> TrainConfig:
    """Set dotted keys (``{"loss.beta_v": 0.01}``) on ``cfg`` in place, type-checked."""
    keys = valid_keys(cfg)
    for key, value in updates.items():
        key = "task.name" if key == "task" else key  # task=NAME (CLI) / task: NAME (YAML)
        if key not in keys:
            raise KeyError(f"unknown config key {key!r}; valid keys: {', '.join(keys)}")
        section, name = key.split(".", 1)
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        setattr(obj, name, _coerce(key, value, getattr(obj, name), hints.get(name)))
    return cfg


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping; a missing, empty, unparsable or non-mapping file
    is a ValueError naming the file (and the line and column of a syntax error)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} cannot be read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise ValueError(f"config file {path} is empty: expected a mapping of config sections")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the task's own defaults (:attr:`unigrpo.task.Task.config_defaults`),
    then the YAML file, then ``key=value`` overrides; validated."""
    settings = {} if path is None else _flatten(read_yaml(path))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (or task=NAME)")
        key, value = item.split("=", 1)
        settings[key.strip()] = value
    cfg = TrainConfig()
    probe = copy.deepcopy(cfg)
    apply(probe, settings)  # which task: its defaults go under the user's settings
    apply(cfg, _task_defaults(probe.task.name))
    apply(cfg, settings)
    cfg.validate()
    return cfg


def _task_defaults(name: str) -> dict[str, str]:
    from ..task import TASKS

    try:
        factory = TASKS.get(name)
    except Exception:  # an unknown task is reported where the task is built, with the names there are
        return {}
    return dict(getattr(factory, "config_defaults", {}))


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: TrainConfig) -> str:
    d = to_dict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return yaml.safe_dump(d, sort_keys=False)


def save(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_text(path, dump(cfg))
