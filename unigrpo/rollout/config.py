"""Rollout settings, with the names TRL and FlowGRPO users know."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutConfig:
    num_generations: int = 8          # G rounds per prompt (TRL's default)
    # text
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                    # 0: off
    max_reasoning_tokens: int = 48
    # image (FlowGRPO)
    num_inference_steps: int = 10     # K SDE steps in rollouts
    noise_level: float = 0.7          # a
    timestep_shift: float | None = None  # None: the policy's own shift
    timestep_fraction: float = 0.5    # share of the K steps trained (the early, high-noise half: FlowGRPO-Fast)
    timestep_window: str = "early"    # "early": the first steps (high noise); "random": a random subset per round
    sde_window_only: bool = False     # stochastic only on the trained (early) steps, deterministic after
    share_initial_noise: bool = False # one x_1 per prompt, shared by its G rounds
    guidance_scale: float = 1.0       # > 1: classifier-free guidance (ablation only: two velocities a step)
    use_cuda_graph: bool = True       # capture the denoising step on CUDA

    def validate(self) -> None:
        checks = [
            (self.num_generations >= 1, "num_generations must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0 (0: greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (self.max_reasoning_tokens >= 1, "max_reasoning_tokens must be >= 1"),
            (self.num_inference_steps >= 1, "num_inference_steps must be >= 1"),
            (self.noise_level >= 0, "noise_level must be >= 0"),
            (0 < self.timestep_fraction <= 1, "timestep_fraction must be in (0, 1]"),
            (self.timestep_window in ("early", "random"), "timestep_window must be 'early' or 'random'"),
            (not self.sde_window_only or self.timestep_window == "early",
             "sde_window_only needs timestep_window 'early' (one window for the whole batch)"),
            (self.guidance_scale >= 1, "guidance_scale must be >= 1 (1: no CFG)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"RolloutConfig: {msg}")
