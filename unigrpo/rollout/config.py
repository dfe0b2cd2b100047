"""Rollout settings, with the names TRL and FlowGRPO users know."""

from __future__ import annotations

from dataclasses import dataclass

from ..config_bounds import bounded, check_bounds


@dataclass
class RolloutConfig:
    num_generations: int = bounded(8, ge=1, help="G episodes per prompt (TRL's default); training needs >= 2")
    # multi-round interleaved generation: reason -> draw -> look -> reflect -> redraw, up to this many
    # images per episode; after looking, the policy may end the episode instead (its end-of-episode token)
    max_rounds: int = bounded(1, ge=1, help="images per episode at most (1: single round)")
    extra_round_cost: float = bounded(0.0, ge=0, help="subtracted from the reward per image after the first")
    # text
    temperature: float = bounded(1.0, ge=0, help="reasoning sampling temperature (0: greedy)")
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = bounded(0, ge=0, help="0: off")
    max_reasoning_tokens: int = bounded(48, ge=1, help="per turn")
    # image (FlowGRPO)
    num_inference_steps: int = bounded(10, ge=1, help="K SDE steps in rollouts")
    noise_level: float = bounded(0.7, ge=0, help="SDE noise level a (0: ODE, no log-probs to train on)")
    timestep_shift: float | None = bounded(None, gt=0, help="null: the policy's own shift")
    timestep_fraction: float = bounded(0.5, gt=0, le=1, help="share of the K steps trained "
                                                            "(the early, high-noise half: FlowGRPO-Fast)")
    timestep_window: str = "early"    # "early": the first steps (high noise); "random": a random subset per image
    sde_window_only: bool = False     # stochastic only on the trained (early) steps, deterministic after
    share_initial_noise: bool = False # one x_1 per prompt, shared by its G episodes
    guidance_scale: float = bounded(1.0, ge=1, help="> 1: classifier-free guidance (ablation only)")
    use_cuda_graph: bool = True       # capture the denoising step on CUDA

    def validate(self) -> None:
        check_bounds(self, "rollout")
        if self.timestep_window not in ("early", "random"):
            raise ValueError(f"rollout.timestep_window must be 'early' or 'random', got {self.timestep_window!r}")
        if self.sde_window_only and self.timestep_window != "early":
            raise ValueError("rollout.sde_window_only needs rollout.timestep_window 'early' "
                             "(one window for the whole batch)")
