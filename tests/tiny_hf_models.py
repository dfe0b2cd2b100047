"""Tiny random-init Hugging Face models, built and saved inside the tests (no hub access):
a Qwen2-family causal LM with a chat template and ``<think>`` tags, SD3, FLUX and
Qwen-Image flow-matching pipelines, and a CLIP model. Each ``save_*`` writes a directory that
``from_pretrained`` loads exactly as it would a downloaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "a red circle left of a blue square", "two green triangles above a yellow star",
    "draw a small purple cat on a white background", "the plan: put the big shape first, then the small one",
    "colors red green blue yellow purple orange black white", "left right above below next to on top of",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_bpe_tokenizer(vocab_size: int = 320, specials: tuple[str, ...] = (), max_length: int = 77):
    """A byte-level BPE tokenizer trained on :data:`CORPUS` (every string encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", *specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   model_max_length=max_length)


def save_lm(directory: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Qwen2 causal LM + tokenizer (chat template, ``<think>``/``</think>`` tokens)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = byte_bpe_tokenizer(specials=("<|im_start|>", "<|im_end|>", "<think>", "</think>"))
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return Path(directory)


def _clip_text_encoder(tok, hidden: int = 32, projection: int = 32, with_projection: bool = True):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, projection_dim=projection, max_position_embeddings=77,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _t5(tok, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))


def _vae(latent_channels: int, shift: float, scale: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=shift, scaling_factor=scale)


def save_sd3(directory: Path, seed: int = 0, heads: int = 4, head_dim: int = 8, layers: int = 2) -> Path:
    """A tiny StableDiffusion3Pipeline (two CLIP encoders + T5, patch size 1, 4 latent channels);
    the transformer's width (heads x head_dim) and depth set its size."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok = byte_bpe_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=layers,
                                          attention_head_dim=head_dim, num_attention_heads=heads,
                                          caption_projection_dim=heads * head_dim,
                                          joint_attention_dim=32, pooled_projection_dim=64, out_channels=4),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, 0.0609, 1.5035),
        text_encoder=_clip_text_encoder(tok), tokenizer=tok,
        text_encoder_2=_clip_text_encoder(tok), tokenizer_2=tok,
        text_encoder_3=_t5(tok), tokenizer_3=tok)
    pipe.save_pretrained(directory)
    return Path(directory)


def save_flux(directory: Path, seed: int = 0, guidance_embeds: bool = False) -> Path:
    """A tiny FluxPipeline (CLIP + T5, 2x2 packed latents of 4 channels, dynamic shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok = byte_bpe_tokenizer()
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                           guidance_embeds=guidance_embeds),
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        vae=_vae(4, 0.1159, 0.3611),
        text_encoder=_clip_text_encoder(tok, with_projection=False), tokenizer=tok,
        text_encoder_2=_t5(tok), tokenizer_2=tok)
    pipe.save_pretrained(directory)
    return Path(directory)


def save_qwenimage(directory: Path, seed: int = 0) -> Path:
    """A tiny QwenImagePipeline (a Qwen2.5-VL text encoder, 2x2 packed latents of 4 channels,
    the video-style VAE with per-channel latent normalisation, dynamic shift)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    # the pipeline drops its prompt template's first 34 tokens, so the tokenizer must allow long inputs
    tok = byte_bpe_tokenizer(specials=("<|im_start|>", "<|im_end|>"), max_length=2048)
    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
    pipe = QwenImagePipeline(
        transformer=QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                                attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                                guidance_embeds=False, axes_dims_rope=(8, 4, 4)),
        vae=AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                   temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                                   latents_std=[1.5, 0.8, 1.0, 2.0]),
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        text_encoder=Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision)),
        tokenizer=tok)
    pipe.save_pretrained(directory)
    return Path(directory)


def save_clip(directory: Path, seed: int = 0) -> Path:
    """A tiny CLIPModel with its processor (image size 32)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = byte_bpe_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)
