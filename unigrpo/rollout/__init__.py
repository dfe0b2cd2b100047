"""Unbranched group rollouts (reasoning sampling + SDE denoising, no CFG), recorded for training."""

from .batch import RolloutBatch
from .config import RolloutConfig
from .denoise import GraphedStep, Trajectory, denoise, draw_noise, guided_velocity
from .engine import generate_rounds, train_step_mask
from .inference import sample_images, sharded_sampling

__all__ = ["GraphedStep", "RolloutBatch", "RolloutConfig", "Trajectory", "denoise", "draw_noise",
           "generate_rounds", "guided_velocity", "sample_images", "sharded_sampling",
           "train_step_mask"]
