"""The drawing half of a two-model policy: a diffusers flow-matching pipeline.

Each family maps its own conventions to the library's inside this module, never
outside: latents are the VAE's (B, C, h, w) grid (FLUX and Qwen-Image pack 2x2 patches
only around their transformer call; Qwen-Image's VAE frame axis appears only around the
VAE), sigma in (0, 1] with x at 1 pure noise, and the velocity ``v = noise - x_0``, which
is what diffusers' flow-matching transformers
predict (FlowMatchEulerDiscreteScheduler steps ``x + (sigma_next - sigma) v``).
SD3's transformer takes the timestep as ``1000 sigma``, FLUX's and Qwen-Image's as sigma.
The text encoders are the pipeline's own, through its own ``encode_prompt``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..policy import ImageContext

__all__ = ["PipelineContext", "PipelineFamily", "family_for", "SUPPORTED"]


@dataclass
class PipelineContext(ImageContext):
    """The encoded text of B images: token embeddings (B, L, D), and as the family has them
    pooled embeddings (B, P) and the embeddings' mask (B, L)."""

    embeds: Tensor
    pooled: Tensor | None = None
    mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.embeds.shape[0])

    def _map(self, fn) -> PipelineContext:
        return PipelineContext(*(None if t is None else fn(t) for t in (self.embeds, self.pooled, self.mask)))

    def select(self, index: Tensor) -> PipelineContext:
        index = index.to(self.embeds.device)
        return self._map(lambda t: t[index])

    def detach(self) -> PipelineContext:
        return self._map(Tensor.detach)


class PipelineFamily:
    """What differs between pipeline families; the SD3 behaviour is the base."""

    #: the pipeline's own ``max_sequence_length`` default (FLUX's transformer attends to the
    #: T5 padding too, so another length is another conditioning)
    default_text_tokens = 256

    def __init__(self, pipe, resolution: int, max_text_tokens: int, flux_guidance: float) -> None:
        self.pipe, self.flux_guidance = pipe, flux_guidance
        self.max_text_tokens = max_text_tokens or self.default_text_tokens
        self.vae_scale = pipe.vae_scale_factor
        if resolution % (2 * self.vae_scale):
            raise ValueError(f"model.resolution must be a multiple of {2 * self.vae_scale} for this pipeline's VAE, "
                             f"got {resolution}")
        self.resolution = resolution

    # ---------------------------------------------------------------- shapes
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.pipe.transformer.config.in_channels, side, side)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode(self, texts: Sequence[str], device) -> PipelineContext:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(texts), prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=self.max_text_tokens)
        return PipelineContext(embeds, pooled)

    # -------------------------------------------------------------- velocity
    def velocity(self, x: Tensor, sigma: Tensor, ctx: PipelineContext) -> Tensor:
        t = self.pipe.transformer
        return t(hidden_states=x.to(t.dtype), timestep=1000 * sigma, encoder_hidden_states=ctx.embeds.to(t.dtype),
                 pooled_projections=ctx.pooled.to(t.dtype), return_dict=False)[0]

    # --------------------------------------------------------------- schedule
    def sigmas(self, steps: int, shift: float | None, device) -> Tensor:
        """The pipeline's own (steps + 1,) sigmas, 1 -> 0: its scheduler's ``set_timesteps``
        with the arguments the pipeline itself passes."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        if shift is not None:
            if scheduler.config.get("use_dynamic_shifting", False):
                raise ValueError("rollout.timestep_shift: this pipeline's scheduler shifts by resolution "
                                 "(dynamic shifting); leave it null")
            scheduler = type(scheduler).from_config(scheduler.config, shift=shift)
        scheduler.set_timesteps(**self._schedule_args(steps), device="cpu")
        return scheduler.sigmas.to(device=device, dtype=torch.float32)

    def _schedule_args(self, steps: int) -> dict:
        return {"num_inference_steps": steps}

    # ------------------------------------------------------------------- VAE
    def decode(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        z = latents.to(vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        image = vae.decode(z, return_dict=False)[0]
        return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def encode_images(self, images: Tensor) -> Tensor:
        vae = self.pipe.vae
        x = images.permute(0, 3, 1, 2).to(device=vae.device, dtype=vae.dtype) / 127.5 - 1
        z = vae.encode(x).latent_dist.mode()
        return ((z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()


class FluxFamily(PipelineFamily):
    """FLUX: 2x2 latent patches packed into a sequence, rotary ids for text and image, the
    timestep as sigma, resolution-dependent shift, and (dev models) a guidance input."""

    default_text_tokens = 512

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.pipe.transformer.config.in_channels // 4, side, side)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], device) -> PipelineContext:
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=list(texts), prompt_2=None, device=device,
                                                    num_images_per_prompt=1, max_sequence_length=self.max_text_tokens)
        return PipelineContext(embeds, pooled)

    def velocity(self, x: Tensor, sigma: Tensor, ctx: PipelineContext) -> Tensor:
        pipe, t = self.pipe, self.pipe.transformer
        b, c, h, w = x.shape
        packed = pipe._pack_latents(x.to(t.dtype), b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, t.dtype)
        txt_ids = torch.zeros(ctx.embeds.shape[1], 3, device=x.device, dtype=t.dtype)
        guidance = (torch.full((b,), self.flux_guidance, device=x.device, dtype=torch.float32)
                    if t.config.guidance_embeds else None)
        out = t(hidden_states=packed, timestep=sigma.to(t.dtype), guidance=guidance,
                pooled_projections=ctx.pooled.to(t.dtype), encoder_hidden_states=ctx.embeds.to(t.dtype),
                txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return pipe._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)

    def _schedule_args(self, steps: int) -> dict:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.pipe.scheduler.config
        side = self.resolution // self.vae_scale // 2
        mu = calculate_shift(side * side, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / steps, steps).tolist(), "mu": mu}


class QwenImageFamily(FluxFamily):
    """Qwen-Image: FLUX's packing, timestep and resolution shift; one Qwen2.5-VL text encoder
    whose embeddings come with a mask and no pooled vector; a video-style VAE (a frame axis
    of 1) normalised per channel by ``latents_mean`` / ``latents_std``."""

    default_text_tokens = 512

    @torch.no_grad()
    def encode(self, texts: Sequence[str], device) -> PipelineContext:
        embeds, mask = self.pipe.encode_prompt(prompt=list(texts), device=device, num_images_per_prompt=1,
                                               max_sequence_length=self.max_text_tokens)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return PipelineContext(embeds, mask=mask)

    def velocity(self, x: Tensor, sigma: Tensor, ctx: PipelineContext) -> Tensor:
        pipe, t = self.pipe, self.pipe.transformer
        b, c, h, w = x.shape
        guidance = (torch.full((b,), self.flux_guidance, device=x.device, dtype=torch.float32)
                    if t.config.guidance_embeds else None)
        out = t(hidden_states=pipe._pack_latents(x.to(t.dtype), b, c, h, w), timestep=sigma.to(t.dtype),
                guidance=guidance, encoder_hidden_states=ctx.embeds.to(t.dtype), encoder_hidden_states_mask=ctx.mask,
                img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return pipe._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)[:, :, 0]

    def _normalisation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        c = self.pipe.vae.config
        view = (1, c.z_dim, 1, 1, 1)
        return (torch.tensor(c.latents_mean).view(view).to(like), torch.tensor(c.latents_std).view(view).to(like))

    def decode(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        z = latents[:, :, None].to(vae.dtype)
        mean, std = self._normalisation(z)
        image = vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]
        return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def encode_images(self, images: Tensor) -> Tensor:
        vae = self.pipe.vae
        x = images.permute(0, 3, 1, 2)[:, :, None].to(device=vae.device, dtype=vae.dtype) / 127.5 - 1
        z = vae.encode(x).latent_dist.mode()
        mean, std = self._normalisation(z)
        return ((z - mean) / std)[:, :, 0].float()


#: diffusers pipeline class name -> family
SUPPORTED = {"StableDiffusion3Pipeline": PipelineFamily, "FluxPipeline": FluxFamily,
             "QwenImagePipeline": QwenImageFamily}


def family_for(pipe, **kwargs) -> PipelineFamily:
    """The family of a loaded pipeline; a ValueError naming ``model.pipeline`` otherwise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    name = type(pipe).__name__
    if name not in SUPPORTED:
        raise ValueError(f"model.pipeline: {name} is not supported; supported: {', '.join(SUPPORTED)}")
    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(f"model.pipeline: the scheduler is {type(pipe.scheduler).__name__}, not flow matching "
                         "(FlowMatchEulerDiscreteScheduler)")
    return SUPPORTED[name](pipe, **kwargs)
