"""The joint UniGRPO objective on a minibatch of rounds (METHOD.md):

    L = L_text + lambda_img * L_image + beta_v * L_reg

L_text: token-level clipped GRPO surrogate (+ optional k3 KL) on the reasoning
tokens; L_image: FlowGRPO's per-step clipped surrogate on the trained denoising
steps; L_reg: velocity MSE against the frozen reference on the same states
(or FlowGRPO's latent KL, or nothing, for ablations). One backward, one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..policy import UnifiedPolicy, concat_tokens
from ..rollout import RolloutBatch, guided_velocity

LOSS_TYPES = ("token_mean", "seq_mean", "dr_grpo")
PENALTIES = ops.sde.PENALTIES


@dataclass
class LossConfig:
    """Names as in TRL (epsilon, epsilon_high, beta, loss_type, scale_rewards) and
    FlowGRPO (clip_range, adv_clip_max); beta_v weights the image penalty."""

    epsilon: float = 0.2
    epsilon_high: float | None = None    # None: = epsilon
    beta: float = 0.0                    # text k3 KL to the reference (off by default, as in TRL)
    # token_mean (default): sum over all reasoning tokens of the minibatch / their count, so every
    # token weighs the same whatever its round's length (DAPO, TRL's "dapo"); seq_mean: per-round
    # mean, then mean (original GRPO, favours short rounds' tokens); dr_grpo: sum / (rounds * max_len)
    loss_type: str = "token_mean"
    scale_rewards: str = "group"         # group | batch | none (Dr. GRPO)
    adv_clip_max: float = 5.0
    clip_range: float = 1e-4             # image ratio clip (FlowGRPO)
    # weight of the image penalty. It is not scale-free: Adam follows whichever gradient dominates,
    # and the surrogate's is small (mean-over-dims log-probs, clip 1e-4); on the built-in model the
    # penalty's gradient at beta_v=1 is 10-500x the surrogate's and pins the image policy
    beta_v: float = 1e-3
    image_penalty: str = "velocity_mse"  # velocity_mse (UniGRPO) | latent_kl (FlowGRPO) | none
    lambda_img: float = 1.0
    # the image losses' gradients also reach the text context the image tokens attend to
    # (the shared layers' encoding of prompt + reasoning); false: they train only the image path
    image_context_grad: bool = True
    train_text: bool = True
    train_image: bool = True
    mask_truncated: bool = False         # drop rounds whose reasoning hit the length limit

    def validate(self) -> None:
        from .advantages import SCALE_REWARDS

        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"loss.scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.image_penalty not in PENALTIES:
            raise ValueError(f"loss.image_penalty must be one of {PENALTIES}, got {self.image_penalty!r}")
        if not (self.train_text or self.train_image):
            raise ValueError("loss: at least one of train_text / train_image must be true")
        for name in ("epsilon", "clip_range", "beta", "beta_v", "lambda_img", "adv_clip_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


def _aggregate(loss: Tensor, mask: Tensor, loss_type: str) -> Tensor:
    """(B, N) per-token losses (0 where masked) -> scalar."""
    mask = mask.float()
    if loss_type == "token_mean":
        return loss.sum() / mask.sum().clamp_min(1)
    if loss_type == "seq_mean":
        return (loss.sum(1) / mask.sum(1).clamp_min(1)).mean()
    return loss.sum() / (loss.shape[0] * max(loss.shape[1], 1))


def text_loss(policy: UnifiedPolicy, ref: UnifiedPolicy | None, mb: RolloutBatch, adv: Tensor,
              cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    ids, mask = concat_tokens(mb.prompt_ids, mb.prompt_mask, mb.reasoning_ids, mb.reasoning_mask)
    lp_all, ent_all = policy.token_logprobs(ids, mask, mb.temperature, return_entropy=True)
    start = mb.prompt_ids.shape[1]
    logp, ent = lp_all[:, start:], ent_all[:, start:]
    tok_mask = mb.reasoning_mask.clone()
    if cfg.mask_truncated:
        tok_mask &= ~mb.truncated[:, None]
    ref_logp = None
    if cfg.beta > 0 and ref is not None:
        with torch.no_grad():
            ref_logp = ref.token_logprobs(ids, mask, mb.temperature)[:, start:]
    flat = tok_mask.reshape(-1)
    out = ops.grpo_token_loss(mb.reasoning_logprobs.reshape(-1), adv[:, None].expand_as(logp).reshape(-1),
                              flat, logp=logp.reshape(-1), eps_low=cfg.epsilon, eps_high=cfg.epsilon_high,
                              ref_logp=None if ref_logp is None else ref_logp.reshape(-1), beta=cfg.beta)
    loss = _aggregate(out.loss.view_as(logp), tok_mask, cfg.loss_type)
    n = tok_mask.float().sum().clamp_min(1)
    stats = {f"text/{k}": v for k, v in out.stats.items()}
    stats["text/entropy"] = (ent.detach() * tok_mask).sum() / n
    stats["text/reasoning_len"] = mb.reasoning_mask.float().sum(1).mean()
    stats["text/truncated_frac"] = mb.truncated.float().mean()
    return loss, stats


def image_loss(policy: UnifiedPolicy, ref: UnifiedPolicy, mb: RolloutBatch, adv: Tensor,
               cfg: LossConfig) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(mean clipped surrogate, mean penalty, stats) over the trained (round, step) pairs."""
    ids, mask = concat_tokens(mb.prompt_ids, mb.prompt_mask, mb.reasoning_ids, mb.reasoning_mask)
    rows, steps = mb.train_steps.to(ids.device).nonzero(as_tuple=True)
    sig, sig_next = mb.sigmas[steps], mb.sigmas[steps + 1]
    x, x_next = mb.latents[rows, steps], mb.latents[rows, steps + 1]

    def velocity(model, grad: bool):
        with torch.set_grad_enabled(grad and cfg.image_context_grad):
            ctx = model.image_context(ids, mask).select(rows)
            uncond = None
            if mb.guidance_scale != 1.0:
                empty = model.encode_prompts([""] * len(mb), reasoning=False)
                uncond = model.image_context(empty.ids, empty.mask).select(rows)
        with torch.set_grad_enabled(grad):
            return guided_velocity(model, x, sig, ctx, uncond, mb.guidance_scale)

    v = velocity(policy, True)
    v_ref = velocity(ref, False) if cfg.image_penalty != "none" else v.detach()
    out = ops.flow_grpo_step_loss(v, v_ref, x, x_next, sig, sig_next, mb.step_logprobs[rows, steps], adv[rows],
                                  noise_level=mb.noise_level, clip_range=cfg.clip_range, beta=0.0,
                                  penalty=cfg.image_penalty)
    stats = {f"image/{k}": s for k, s in out.stats.items()}
    return out.loss.mean(), out.penalty.mean(), stats


def joint_loss(policy: UnifiedPolicy, ref: UnifiedPolicy, mb: RolloutBatch, adv: Tensor,
               cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The scalar to backpropagate for one minibatch, and its stats (0-dim tensors)."""
    total = torch.zeros((), device=adv.device)
    stats: dict[str, Tensor] = {}
    if cfg.train_text:
        lt, s = text_loss(policy, ref, mb, adv, cfg)
        total = total + lt
        stats.update(s, **{"loss/text": lt.detach()})
    if cfg.train_image:
        li, reg, s = image_loss(policy, ref, mb, adv, cfg)
        total = total + cfg.lambda_img * li + cfg.beta_v * reg
        stats.update(s, **{"loss/image": li.detach(), "loss/reg": reg.detach()})
    stats["loss/total"] = total.detach()
    return total, stats
