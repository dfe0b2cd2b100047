"""What the trainer needs from a world, and nothing else (torchtitan's ``TrainSpec``).

A :class:`Task` gives the trainer its prompts (train and held-out, each with
per-prompt metadata for the rewards), its rewards (a :class:`WeightedRewards`),
the metrics it wants logged for a rollout batch, a held-out evaluation, and
how to build its default policy. The trainer names no model and no task:

    task = build_task(cfg.task)                         # task=NAME on the command line
    policy = task.build_policy(cfg.model, device)
    trainer = Trainer(cfg, task=task, policy=policy)

Tasks are found by name in :data:`TASKS` (entry points of the group
``unigrpo.tasks``, or ``TASKS.register``); ``package.module:Factory`` works too.
A factory is called as ``factory(task_config)`` and returns a :class:`Task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .config_bounds import bounded, check_bounds
from .policy import POLICIES, UnifiedPolicy
from .registry import Registry
from .rewards import WeightedRewards

if TYPE_CHECKING:
    from .rollout import RolloutBatch

__all__ = ["resolve_device", "TaskPrompt", "TaskConfig", "Task", "TASKS", "build_task", "ModelConfig", "category_means"]

TASKS: Registry = Registry("task", "unigrpo.tasks")


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt: the text the policy sees and whatever the rewards need to judge it."""

    text: str
    metadata: Any = None


@dataclass
class ModelConfig:
    """The policy to train. ``type`` picks the loader, which reads the keys it documents:
    ``shapes`` reads ``checkpoint``; ``lm+diffusers`` (a Hugging Face causal LM that
    reasons + a diffusers flow-matching pipeline that draws) reads ``lm``, ``pipeline``
    and the keys after them."""

    type: str = field(default="shapes", metadata={
        "help": "registered policy loader (shapes | lm+diffusers | unigrpo.policies entry points) "
                "or package.module:loader"})
    checkpoint: str = field(default="", metadata={
        "help": "shapes: a checkpoint directory, or builtin:shapes-sft (the shipped SFT model, the default); "
                "lm+diffusers: a saved policy (run, checkpoint or policy directory) to start from "
                "(default: lm + pipeline as they are)"})
    device: str = field(default="auto", metadata={"help": "auto: cuda when available, else cpu"})
    # lm+diffusers
    lm: str = field(default="", metadata={"help": "lm+diffusers: local directory of a transformers causal LM "
                                                  "(weights + tokenizer with a chat template)"})
    pipeline: str = field(default="", metadata={
        "help": "lm+diffusers: local directory of a diffusers flow-matching pipeline "
                "(StableDiffusion3Pipeline, FluxPipeline, QwenImagePipeline)"})
    dtype: str = field(default="auto", metadata={"help": "lm+diffusers weights: auto (bfloat16 on CUDA, float32 on CPU)"
                                                         " | float32 | bfloat16"})
    resolution: int = bounded(512, ge=16, help="lm+diffusers: image height = width in pixels")
    train: str = field(default="both", metadata={"help": "lm+diffusers: what is trained, lm | transformer | both "
                                                         "(text encoders and VAE are always frozen)"})
    lora_rank: int = bounded(0, ge=0, help="lm+diffusers: LoRA rank on the trained models (0: full fine-tuning)")
    lora_alpha: float = bounded(16.0, gt=0, help="lm+diffusers: LoRA alpha")
    lora_lm_modules: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata={
        "help": "lm+diffusers: LM modules LoRA adapts (peft target_modules, comma-separated)"})
    lora_transformer_modules: str = field(default="to_q,to_k,to_v,to_out.0", metadata={
        "help": "lm+diffusers: transformer modules LoRA adapts (peft target_modules, comma-separated)"})
    gradient_checkpointing: bool = False  # lm+diffusers: recompute the LM's and the transformer's blocks in backward
    system_prompt: str = field(default="Think about how to draw the user's image: plan it inside <think> </think>.",
                               metadata={"help": "lm+diffusers: the LM's system message"})
    image_prompt: str = field(default="{prompt}. {reasoning}", metadata={
        "help": "lm+diffusers: what the pipeline's text encoders read ({prompt} and {reasoning} filled in)"})
    max_text_tokens: int = bounded(0, ge=0, help="lm+diffusers: the pipeline's text-encoder sequence length "
                                                 "(0: the pipeline's default, SD3 256, FLUX and Qwen-Image 512)")
    flux_guidance: float = bounded(3.5, ge=0, help="lm+diffusers: FLUX's distilled-guidance input "
                                                   "(guidance-embedding models only; one forward, not CFG)")

    def validate(self) -> None:
        if not self.type:
            raise ValueError("model.type must not be empty")
        if self.device != "auto":
            _parse_device(self.device, "model.device")  # whether this machine has it: resolve_device
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"model.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.train not in ("lm", "transformer", "both"):
            raise ValueError(f"model.train must be lm, transformer or both, got {self.train!r}")
        check_bounds(self, "model")


def _parse_device(name: str, key: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{key} must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_device(name: str, key: str = "model.device") -> torch.device:
    """A device name (auto: cuda when available, else cpu) -> a device this machine has;
    otherwise a ValueError naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = _parse_device(name, key)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key}={name!r}, but this machine has no CUDA device (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{key}={name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class TaskConfig:
    """Options of the built-in tasks; each task reads the keys it documents and
    rejects values it cannot use (naming the ``task.*`` key)."""

    name: str = field(default="shapes", metadata={
        "help": "registered task (shapes | prompts | entry points of unigrpo.tasks) or package.module:Factory"})
    reward: str = field(default="", metadata={
        "help": "shapes: the verifier mode trained on, strict | shaped | dense (default shaped); "
                "prompts: registered rewards with weights, e.g. 'brightness' or 'a:1.0,b:0.5'"})
    reward_model: str = field(default="", metadata={
        "help": "prompts: local directory of the model a reward loads (task.reward=clip or pickscore: a CLIP model)"})
    file: str = field(default="", metadata={
        "help": "prompts: a .txt file (one prompt a line) or .jsonl ({\"prompt\": ..., any metadata})"})
    heldout_file: str = field(default="", metadata={
        "help": "prompts: held-out prompts from a second file (instead of heldout_fraction)"})
    heldout_fraction: float = bounded(0.1, ge=0, lt=1,
                                      help="prompts: share of the file held out, chosen with split_seed")
    split_seed: int = bounded(0, ge=0, help="seed of the train / held-out split")
    eval_size: int = bounded(24, ge=0, help="shapes: held-out images per category; "
                                            "prompts: held-out prompts evaluated (0: all)")
    eval_steps: int = bounded(40, ge=1, help="ODE (Euler) steps of the held-out evaluation")
    eval_temperature: float = bounded(1.0, ge=0, help="reasoning temperature of the held-out evaluation (0: greedy)")
    eval_seed: int = bounded(0, ge=0, help="seed of the evaluation's noise and reasoning")
    eval_batch_size: int = bounded(128, ge=1, help="images drawn at once in the held-out evaluation (its memory; "
                                                   "under torchrun the ranks share these chunks)")
    # train without CFG, evaluate with it: the setup FlowGRPO's author reports best for Bagel
    eval_guidance_scale: float = bounded(1.0, ge=1, help="classifier-free guidance of the held-out evaluation "
                                                         "(1: none, as in training)")

    def validate(self) -> None:
        if not self.name:
            raise ValueError("task.name must name a task (e.g. shapes, prompts)")
        check_bounds(self, "task")


class Task(ABC):
    """A world the trainer can train in. Subclasses implement the abstract methods."""

    name: str = "task"
    #: training settings this task's runs start from, ``{"section.key": "value"}``, applied
    #: over the library's defaults and under a config file and command-line overrides
    #: (e.g. a multi-round task: ``{"rollout.max_rounds": "2"}``)
    config_defaults: dict[str, str] = {}

    def __init__(self, cfg: TaskConfig | None = None) -> None:
        self.cfg = TaskConfig(name=self.name) if cfg is None else cfg

    @abstractmethod
    def train_prompts(self) -> Sequence[TaskPrompt]:
        """The prompts rollouts draw from."""

    @abstractmethod
    def heldout_prompts(self) -> Sequence[TaskPrompt]:
        """Prompts never trained on, for :meth:`evaluate`."""

    @abstractmethod
    def rewards(self) -> WeightedRewards:
        """The rewards of a round: the weighted total is trained on; every component
        (weight 0 included) is logged as ``reward/<name>_mean``."""

    def batch_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """Extra metrics of one rollout batch (e.g. accuracy per category); none by default."""
        return {}

    @abstractmethod
    def evaluate(self, policy: UnifiedPolicy, out_dir: str | Path | None) -> dict[str, float]:
        """Held-out evaluation of ``policy``: flat metrics with an ``overall`` entry
        (logged as ``eval/<key>``); with ``out_dir``, also results and an image grid there."""

    def build_policy(self, model: ModelConfig, device: torch.device | str = "cpu") -> UnifiedPolicy:
        """The policy to train when none is given: ``model.type``'s loader, called as
        ``loader(model, device)``."""
        return POLICIES.get(model.type)(model, device)


def category_means(values, categories: Sequence[Any], prefix: str) -> dict[str, float]:
    """``{prefix + str(c): mean of values where the category is c}`` over the categories
    present (``None`` entries belong to none), in sorted order; values: (B,) numbers."""
    values = np.asarray(values, dtype=np.float64)
    names = [None if c is None else str(c) for c in categories]
    return {f"{prefix}{c}": float(values[[i for i, k in enumerate(names) if k == c]].mean())
            for c in sorted({c for c in names if c is not None})}


def build_task(cfg: TaskConfig) -> Task:
    """The task ``cfg.name`` names, built from ``cfg``."""
    cfg.validate()
    task = TASKS.get(cfg.name)(cfg)
    if not isinstance(task, Task):
        raise TypeError(f"task {cfg.name!r} built a {type(task).__name__}, not a unigrpo.task.Task")
    return task
