"""UniGRPO training: joint GRPO (text) + FlowGRPO (image) + velocity-MSE objective."""

from .advantages import group_advantages
from .config import LoopConfig, ModelConfig, OptimConfig, TrainConfig, load as load_config
from .losses import LossConfig, joint_loss
from .trainer import Trainer

__all__ = ["LossConfig", "LoopConfig", "ModelConfig", "OptimConfig", "TrainConfig", "Trainer", "group_advantages",
           "joint_loss", "load_config"]
