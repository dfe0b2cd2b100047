"""Unbranched group rollouts (reasoning sampling + SDE denoising, no CFG; one or several rounds per
episode), recorded for training, and the same loop for evaluation."""

from .batch import RolloutBatch
from .config import RolloutConfig
from .denoise import GraphedStep, Trajectory, denoise, draw_noise, guided_velocity
from .engine import generate_episodes, train_step_mask
from .episodes import Episodes, play_episodes
from .inference import EpisodeSamples, sample_episodes, sample_images, sharded_sampling

__all__ = ["EpisodeSamples", "Episodes", "GraphedStep", "RolloutBatch", "RolloutConfig", "Trajectory", "denoise",
           "draw_noise", "generate_episodes", "guided_velocity", "play_episodes", "sample_episodes", "sample_images",
           "sharded_sampling", "train_step_mask"]
