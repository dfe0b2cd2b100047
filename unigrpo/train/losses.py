"""The joint UniGRPO objective on a minibatch of episodes (docs/method.md):

    L = L_text + lambda_img * L_image + beta_v * L_reg

L_text: token-level clipped GRPO surrogate (+ optional k3 KL, weight ``beta``,
applied in :func:`unigrpo.ops.grpo_token_loss`) on the reasoning tokens,
aggregated as TRL's ``loss_type`` says; L_image: FlowGRPO's per-step clipped
surrogate on the trained denoising steps; L_reg: velocity MSE against the
frozen reference on the same states (or FlowGRPO's latent KL, or nothing, for
ablations), weighted here and nowhere else. One backward, one step.

One teacher-forced text pass per minibatch (``policy.text_and_image_context``)
serves both the reasoning's log-probs and the image tokens' text context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..config_bounds import bounded, check_bounds
from ..policy import ImageContext, UnifiedPolicy, hidden_token_logprobs
from ..rollout import RolloutBatch, guided_velocity

LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo")
TOKEN_SUM_TYPES = ("dapo", "bnpo")  # normalised by a token count over every rank
PENALTIES = ops.sde.PENALTIES


@dataclass
class LossConfig:
    """Names as in TRL (epsilon, epsilon_high, beta, loss_type, scale_rewards) and
    FlowGRPO (clip_range, adv_clip_max); beta_v weights the image penalty."""

    epsilon: float = bounded(0.2, ge=0, lt=1, help="text ratio clip, lower (TRL)")
    epsilon_high: float | None = bounded(None, ge=0, help="text ratio clip, upper (null: = epsilon; DAPO 0.28)")
    beta: float = bounded(0.0, ge=0, help="text k3 KL to the reference (off by default, as in TRL)")
    # TRL's names and meanings (text tokens; the image steps are always a mean over the minibatch):
    # dapo (default): sum over the tokens / the token count of the whole optimizer step (all its
    # accumulated minibatches), so every token weighs the same whatever its episode's length or
    # minibatch; bnpo: the same per minibatch; grpo: per-episode mean, then mean (favours short
    # episodes' tokens); dr_grpo: sum / (episodes x the most tokens an episode can generate:
    # rollout.max_rounds x rollout.max_reasoning_tokens), a constant
    loss_type: str = "dapo"
    scale_rewards: str = "group"         # group | batch | none (Dr. GRPO)
    adv_clip_max: float = bounded(5.0, gt=0, help="advantages clipped to +-this (FlowGRPO)")
    clip_range: float = bounded(1e-4, gt=0, help="image ratio clip (FlowGRPO)")
    # GRPO-Guard's ratio normalisation of the image steps (FlowGRPO, Flow-Factory, the public
    # UniGRPO reproduction on Bagel): removes the drift that pulls the image ratio's mean below 1
    # and puts every step's log-ratio on one scale; the rollout keeps its step noise for it
    grpo_guard: bool = False
    # weight of the image penalty. It is not scale-free: Adam follows whichever gradient dominates,
    # and the surrogate's is small (mean-over-dims log-probs, clip 1e-4); on the built-in model the
    # penalty's gradient at beta_v=1 is 10-500x the surrogate's and pins the image policy
    beta_v: float = bounded(1e-3, ge=0, help="weight of the image penalty")
    image_penalty: str = "velocity_mse"  # velocity_mse (UniGRPO) | latent_kl (FlowGRPO) | none
    lambda_img: float = bounded(1.0, ge=0, help="weight of the image surrogate")
    # the image losses' gradients also reach the text context the image tokens attend to
    # (the shared layers' encoding of prompt + reasoning); false: they train only the image path
    image_context_grad: bool = True
    train_text: bool = True
    train_image: bool = True
    mask_truncated: bool = False         # drop episodes whose reasoning hit the length limit

    def validate(self) -> None:
        from .advantages import SCALE_REWARDS

        check_bounds(self, "loss")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"loss.scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.image_penalty not in PENALTIES:
            raise ValueError(f"loss.image_penalty must be one of {PENALTIES}, got {self.image_penalty!r}")
        if not (self.train_text or self.train_image):
            raise ValueError("loss: at least one of train_text / train_image must be true")


@dataclass(frozen=True)
class TokenNorm:
    """What the text loss of one minibatch is divided by, fixed before the step:
    ``accumulation`` minibatches make one optimizer step and hold ``step_tokens``
    reasoning tokens in all; ``max_tokens`` is the most an episode can generate,
    ``rollout.max_rounds x rollout.max_reasoning_tokens``.
    Data parallel: the counts are every rank's, and ``ranks`` undoes DDP's gradient
    average for the token sums; ``minibatch_tokens``: this minibatch's count over every
    rank (None: the minibatch's own)."""

    accumulation: int = 1
    step_tokens: float = 1.0
    max_tokens: int = 1
    ranks: int = 1
    minibatch_tokens: float | None = None


def token_weights(mask: Tensor, loss_type: str, norm: TokenNorm) -> Tensor:
    """(B, N) weight of each token's loss in the minibatch's share of the step's loss
    (TRL's ``loss_type``), already divided for gradient accumulation: the sum over a step's
    minibatches of sum(weights * per-token loss) is the step's loss. 0 where masked."""
    mask = mask.float()
    if loss_type == "dapo":
        return mask * (norm.ranks / max(norm.step_tokens, 1.0))
    if loss_type == "bnpo":
        tokens = mask.sum().clamp_min(1) if norm.minibatch_tokens is None else max(norm.minibatch_tokens, 1.0)
        per_mb = mask * norm.ranks / tokens
    elif loss_type == "grpo":
        per_mb = mask / (mask.sum(1, keepdim=True).clamp_min(1) * mask.shape[0])
    elif loss_type == "dr_grpo":
        per_mb = mask / (mask.shape[0] * norm.max_tokens)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return per_mb / norm.accumulation


def aggregate_token_loss(loss: Tensor, mask: Tensor, loss_type: str, norm: TokenNorm) -> Tensor:
    """(B, N) per-token losses (0 where masked) of one minibatch -> its share of the
    step's loss: ``sum(token_weights(...) * loss)``."""
    return (token_weights(mask, loss_type, norm) * loss).sum()


def trained_token_mask(mb: RolloutBatch, cfg: LossConfig) -> Tensor:
    """bool (B, N): the reasoning tokens the text loss trains (``mask_truncated`` drops truncated episodes)."""
    mask = mb.reasoning_mask
    return mask & ~mb.truncated[:, None] if cfg.mask_truncated else mask


def episode_states(model: UnifiedPolicy, mb: RolloutBatch, text: bool = True,
                   image: bool = True) -> tuple[Tensor | None, ImageContext | None]:
    """One teacher-forced pass over the minibatch's episodes: the text's hidden states
    (B, L, H) (``text``) and the contexts of the images (``image``), row ``b * R + r``
    for image r of episode b. A multi-round batch runs the interleaved sequence, the
    images the model looked at inside the text."""
    if mb.max_rounds > 1:
        hidden, ctx = model.interleaved_contexts(mb.ids, mb.mask, mb.seen_images())
        return hidden if text else None, ctx if image else None
    if text and image:
        return model.text_and_image_context(mb.ids, mb.mask)
    return (model.text_forward(mb.ids, mb.mask) if text else None,
            model.image_context(mb.ids, mb.mask) if image else None)


def text_loss(policy: UnifiedPolicy, ref: UnifiedPolicy | None, mb: RolloutBatch, adv: Tensor, cfg: LossConfig,
              hidden: Tensor, norm: TokenNorm, ref_hidden: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """hidden: the policy's teacher-forced states of ``mb.ids`` (B, L, H); ``ref_hidden``: the
    reference's, for the KL (``loss.beta > 0``; computed here when not given). The loss comes
    straight from ``hidden`` and the LM head (:func:`unigrpo.ops.fused_linear_grpo_loss`:
    the (tokens, V) logits never exist whole, and their gradients are formed in the same pass)."""
    start = mb.reasoning_start
    b, n = mb.reasoning_mask.shape
    tok_mask = trained_token_mask(mb, cfg)
    # a token is scored from the state before it; padding (a masked token or one after a masked one) weighs 0
    valid = mb.mask[:, start:].bool() & mb.mask[:, start - 1:-1].bool()
    weights = token_weights(tok_mask & valid, cfg.loss_type, norm)
    ref_logp = None
    if cfg.beta > 0 and ref is not None:
        with torch.no_grad():
            if ref_hidden is None:
                ref_hidden, _ = episode_states(ref, mb, image=False)
            ref_logp = hidden_token_logprobs(ref_hidden, ref.lm_head_weight, mb.ids, mb.mask, mb.temperature,
                                             start).reshape(-1)
    out = ops.fused_linear_grpo_loss(
        hidden[:, start - 1:-1].reshape(b * n, -1), policy.lm_head_weight, mb.ids[:, start:].reshape(-1),
        mb.reasoning_logprobs.reshape(-1), adv[:, None].expand(b, n).reshape(-1), weights.reshape(-1),
        temperature=mb.temperature, eps_low=cfg.epsilon, eps_high=cfg.epsilon_high, ref_logp=ref_logp, beta=cfg.beta)
    count = tok_mask.float().sum().clamp_min(1)
    stats = {f"text/{k}": v for k, v in out.stats.items()}
    stats["text/entropy"] = (out.entropy.view(b, n) * tok_mask).sum() / count
    stats["text/reasoning_len"] = mb.reasoning_mask.float().sum(1).mean()
    stats["text/truncated_frac"] = mb.truncated.float().mean()
    return out.loss, stats


def image_loss(policy: UnifiedPolicy, ref: UnifiedPolicy, mb: RolloutBatch, adv: Tensor, cfg: LossConfig,
               ctx: ImageContext, ref_ctx: ImageContext | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(mean clipped surrogate, mean penalty, stats) over the trained (episode, image, step)
    triples. ctx: the policy's image contexts of the minibatch (:func:`episode_states`, with
    autograd history unless ``image_context_grad`` is off); ``ref_ctx``: the reference's, for
    the penalty (computed here when not given)."""
    if cfg.grpo_guard and mb.step_noise is None:
        raise ValueError("loss.grpo_guard needs the rollout's step noise: an SDE rollout (rollout.noise_level > 0) "
                         "generated with keep_noise=True")
    rows, rounds, steps = mb.train_steps.to(mb.ids.device).nonzero(as_tuple=True)
    images = rows * mb.max_rounds + rounds  # the context row of each trained step's image
    sig, sig_next = mb.sigmas[steps], mb.sigmas[steps + 1]
    x, x_next = mb.latents[rows, rounds, steps], mb.latents[rows, rounds, steps + 1]

    def uncond_context(model):  # CFG (ablation only): the empty prompt's context
        if mb.guidance_scale == 1.0:
            return None
        empty = model.encode_prompts([""] * len(mb), reasoning=False)
        return model.image_context(empty.ids, empty.mask).select(rows)

    with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.image_context_grad):
        uncond = uncond_context(policy)
    v = guided_velocity(policy, x, sig, ctx.select(images), uncond, mb.guidance_scale)
    if cfg.image_penalty == "none":
        v_ref = v.detach()
    else:
        with torch.no_grad():
            if ref_ctx is None:
                ref_ctx = episode_states(ref, mb, text=False)[1]
            v_ref = guided_velocity(ref, x, sig, ref_ctx.select(images), uncond_context(ref), mb.guidance_scale)
    out = ops.flow_grpo_step_loss(v, v_ref, x, x_next, sig, sig_next, mb.step_logprobs[rows, rounds, steps], adv[rows],
                                  noise_level=mb.noise_level, clip_range=cfg.clip_range, penalty=cfg.image_penalty,
                                  noise=mb.step_noise[rows, rounds, steps] if cfg.grpo_guard else None)
    stats = {f"image/{k}": s for k, s in out.stats.items()}
    return out.loss.mean(), out.penalty.mean(), stats


def joint_loss(policy: UnifiedPolicy, ref: UnifiedPolicy, mb: RolloutBatch, adv: Tensor, cfg: LossConfig,
               norm: TokenNorm) -> tuple[Tensor, dict[str, Tensor]]:
    """The scalar to backpropagate for one minibatch (its share of the optimizer
    step's loss: divided for ``norm.accumulation``), and its stats (0-dim tensors;
    ``loss/*`` per minibatch, before that division)."""
    stats: dict[str, Tensor] = {}
    with torch.set_grad_enabled(torch.is_grad_enabled() and (cfg.train_text or cfg.image_context_grad)):
        hidden, ctx = episode_states(policy, mb, cfg.train_text, cfg.train_image)
    if ctx is not None and not cfg.image_context_grad:
        ctx = ctx.detach()
    # the reference's states for the text KL and the image penalty: one pass serves both
    ref_text = cfg.train_text and cfg.beta > 0 and ref is not None
    ref_image = cfg.train_image and cfg.image_penalty != "none"
    ref_hidden = ref_ctx = None
    if ref_text or ref_image:
        with torch.no_grad():
            ref_hidden, ref_ctx = episode_states(ref, mb, ref_text, ref_image)
    total = torch.zeros((), device=adv.device)
    if cfg.train_text:
        lt, s = text_loss(policy, ref, mb, adv, cfg, hidden, norm, ref_hidden)
        total = total + lt
        # back to this rank's share, before accumulation and the token sums' rank factor
        scale = (1 if cfg.loss_type == "dapo" else norm.accumulation) / (
            norm.ranks if cfg.loss_type in TOKEN_SUM_TYPES else 1)
        stats.update(s, **{"loss/text": lt.detach() * scale})
    if cfg.train_image:
        li, reg, s = image_loss(policy, ref, mb, adv, cfg, ctx, ref_ctx)
        image_total = cfg.lambda_img * li + cfg.beta_v * reg
        total = total + image_total / norm.accumulation
        stats.update(s, **{"loss/image": li.detach(), "loss/reg": reg.detach()})
    stats["loss/total"] = total.detach()
    return total, stats
