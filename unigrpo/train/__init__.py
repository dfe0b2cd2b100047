"""UniGRPO training: joint GRPO (text) + FlowGRPO (image) + velocity-MSE objective."""

from .advantages import group_advantages
from ..task import ModelConfig, TaskConfig
from .config import LoopConfig, OptimConfig, TrainConfig, load as load_config
from .losses import LossConfig, TokenNorm, aggregate_token_loss, joint_loss
from .trainer import Trainer

__all__ = ["LossConfig", "LoopConfig", "ModelConfig", "OptimConfig", "TaskConfig", "TokenNorm", "TrainConfig",
           "Trainer", "aggregate_token_loss", "group_advantages", "joint_loss", "load_config"]
