"""``model.type=lm+diffusers``: a Hugging Face causal LM reasons, a diffusers
flow-matching pipeline draws, and one UniGRPO objective trains both.

    python -m unigrpo.train model.type=lm+diffusers model.lm=DIR model.pipeline=DIR \\
        model.lora_rank=32 task=prompts task.file=prompts.txt task.reward=clip task.reward_model=DIR

The LM samples a plan under its chat template (``<think> ... </think>``, or EOS);
the pipeline's frozen text encoders read ``model.image_prompt`` filled with the
prompt and the plan; its transformer is the velocity model; its VAE maps latents
to pixels; its scheduler gives the sigmas. The image loss reaches the transformer
only (the plan enters the drawing as text), the text loss the LM only.

With ``model.lora_rank > 0`` the trained models carry peft LoRA adapters and the
frozen reference is the same models with their adapters disabled; without, the
reference is a frozen copy of the trained models (the frozen parts are shared).
:meth:`LMDiffusersPolicy.save_pretrained` writes what was trained in the formats
its libraries read back (see the method).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..integrity import CheckpointError, check_finite, read_safetensors
from ..io import atomic_write_text
from ..policy import ImageContext, TokenBatch, UnifiedPolicy
from ..task import ModelConfig
from .lora import (PEFT_WEIGHTS, adapters_disabled, add_lora, load_lora_state_dict, lora_state_dict, read_peft_adapter,
                   save_peft_adapter)
from .pipelines import PipelineContext, family_for
from .reasoner import ChatLayout, KVState, positions

__all__ = ["LMDiffusersPolicy", "load_policy", "POLICY_FILE"]

POLICY_FILE = "unigrpo_policy.json"
TRANSFORMER_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' load_lora_weights file
#: the ModelConfig keys a saved policy keeps (the rest are per run: device, checkpoint)
_SAVED_KEYS = ("lm", "pipeline", "dtype", "resolution", "train", "lora_rank", "lora_alpha", "lora_lm_modules",
               "lora_transformer_modules", "gradient_checkpointing", "system_prompt", "image_prompt",
               "max_text_tokens", "flux_guidance")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _local_dir(path: str, key: str) -> Path:
    if not path:
        raise ValueError(f"{key} must be a local directory (model.type=lm+diffusers needs model.lm and model.pipeline)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"{key}: no such directory {path!r} (models load from local directories only)")
    return p.resolve()


def _load_lm(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"model.lm: {str(path)!r} is not a transformers causal LM with its tokenizer "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return lm, tokenizer


def _load_pipeline(path: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise ValueError(f"model.pipeline: {str(path)!r} is not a diffusers pipeline directory (no model_index.json)")
    try:
        return DiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"model.pipeline: cannot load {str(path)!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]})") from None


class LMDiffusersPolicy(UnifiedPolicy):
    """A causal LM (``lm``) that reasons and a diffusers pipeline that draws, as one policy.

    Built by :func:`load_policy` from a :class:`~unigrpo.task.ModelConfig`; ``pipe`` is the
    loaded pipeline, whose transformer, VAE and text encoders become submodules."""

    def __init__(self, lm: nn.Module, tokenizer, pipe, cfg: ModelConfig) -> None:
        super().__init__()
        for key in ("final_logit_softcapping", "logit_scale"):
            if getattr(lm.config, key, None) not in (None, 1.0):
                raise ValueError(f"model.lm: {key} is set; the fused log-prob op needs logits = hidden @ W.T")
        if getattr(lm.get_output_embeddings(), "bias", None) is not None:
            raise ValueError("model.lm: the LM head has a bias; the fused log-prob op needs logits = hidden @ W.T")
        self.cfg = copy.deepcopy(cfg)
        self.lm = lm
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.text_encoders = nn.ModuleList([m for m in pipe.components.values()
                                            if isinstance(m, nn.Module) and m not in (pipe.transformer, pipe.vae)])
        self.pipe = pipe  # not a module: its components are the submodules above
        self.tokenizer = tokenizer
        self.family = family_for(pipe, resolution=cfg.resolution, max_text_tokens=cfg.max_text_tokens,
                                 flux_guidance=cfg.flux_guidance)
        self.layout = ChatLayout(tokenizer, cfg.system_prompt)
        self.latent_shape = self.family.latent_shape
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_token_ids = self.layout.stop_token_ids(lm.generation_config.eos_token_id)
        # transformers renamed the cache argument (past_key_values -> cache) within 5.x
        self._cache_kwarg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        if "{prompt}" not in cfg.image_prompt:
            raise ValueError(f"model.image_prompt must contain {{prompt}}, got {cfg.image_prompt!r}")
        devices = {p.device for p in self.parameters()}
        if len(devices) > 1:
            raise ValueError(f"model.lm and model.pipeline are on different devices ({sorted(map(str, devices))}); "
                             "move the policy with .to(device)")
        self._set_trainable()

    # ----------------------------------------------------------- what trains
    @property
    def trained_modules(self) -> dict[str, nn.Module]:
        """The models ``model.train`` names (LoRA-adapted when ``model.lora_rank`` > 0)."""
        names = {"lm": ("lm",), "transformer": ("transformer",), "both": ("lm", "transformer")}[self.cfg.train]
        return {n: getattr(self, n) for n in names}

    def _set_trainable(self) -> None:
        self.requires_grad_(False)
        keys = {"lm": "model.lora_lm_modules", "transformer": "model.lora_transformer_modules"}
        for name, module in self.trained_modules.items():
            if self.cfg.lora_rank > 0:
                add_lora(module, self.cfg.lora_rank, self.cfg.lora_alpha, getattr(self.cfg, keys[name][6:]), keys[name])
            else:
                module.requires_grad_(True)
            if self.cfg.gradient_checkpointing:
                if name == "lm":  # transformers 5.x renamed it (the old name warns)
                    getattr(module, "activation_checkpointing_enable", module.gradient_checkpointing_enable)()
                else:
                    module.enable_gradient_checkpointing()
        self.train(False)

    def train(self, mode: bool = True) -> LMDiffusersPolicy:
        super().train(mode)
        for name, module in self.named_children():  # frozen parts never leave eval mode
            if name not in self.trained_modules:
                module.eval()
        return self

    # ------------------------------------------------------------------ text
    def encode_prompts(self, texts: Sequence[str], reasoning: bool = True) -> TokenBatch:
        ids, mask = self.layout.encode(texts, reasoning, self.pad_token_id, self.device)
        return TokenBatch(ids, mask)

    def prefill(self, ids: Tensor, mask: Tensor, max_new_tokens: int | None = None):
        from transformers import DynamicCache

        pos = positions(mask)
        cache = DynamicCache(config=self.lm.config)  # filled in place
        out = self.lm(input_ids=ids, attention_mask=mask.long(), position_ids=pos, use_cache=True, logits_to_keep=1,
                      **{self._cache_kwarg: cache})
        return out.logits[:, -1].float(), KVState(cache, mask.long(), pos[:, -1] + 1)

    def decode_step(self, tokens: Tensor, active: Tensor, state: KVState) -> Tensor:
        state.mask = torch.cat([state.mask, active.long()[:, None]], 1)
        out = self.lm(input_ids=tokens[:, None], attention_mask=state.mask, position_ids=state.next_pos[:, None],
                      use_cache=True, **{self._cache_kwarg: state.cache})
        state.next_pos = state.next_pos + 1
        return out.logits[:, -1].float()

    def text_forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.lm.get_decoder()(input_ids=ids, attention_mask=mask.long(),
                                     position_ids=positions(mask)).last_hidden_state

    @property
    def lm_head_weight(self) -> Tensor:
        return self.lm.get_output_embeddings().weight

    # ----------------------------------------------------------------- image
    def image_texts(self, ids: Tensor, mask: Tensor) -> list[str]:
        """What the pipeline's text encoders read for each row: ``model.image_prompt`` with
        the row's prompt and reasoning (the bare prompt when there is no reasoning)."""
        out = []
        for prompt, reasoning in self.layout.split(ids, mask):
            if not reasoning:
                out.append(prompt)
                continue
            try:
                out.append(self.cfg.image_prompt.format(prompt=prompt, reasoning=reasoning))
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"model.image_prompt {self.cfg.image_prompt!r}: only {{prompt}} and {{reasoning}} "
                                 f"can be filled in ({e})") from None
        return out

    def image_context(self, ids: Tensor, mask: Tensor) -> ImageContext:
        return self.family.encode(self.image_texts(ids, mask), self.device)

    def velocity(self, x: Tensor, sigma: Tensor, context: PipelineContext) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        return self.family.velocity(x, sigma, context).to(x.dtype)

    def sigma_schedule(self, steps: int, shift: float | None = None) -> Tensor:
        return self.family.sigmas(steps, shift, self.device)

    @torch.no_grad()
    def latents_to_images(self, latents: Tensor) -> Tensor:
        return self.family.decode(latents)

    @torch.no_grad()
    def images_to_latents(self, images: Tensor) -> Tensor:
        return self.family.encode_images(images)

    # ------------------------------------------------------------- lifecycle
    def reference_copy(self):
        """LoRA: these models with adapters disabled (no copy); otherwise a frozen copy of
        the trained models, sharing the frozen ones."""
        if self.cfg.lora_rank > 0:
            return DisabledAdapterReference(self)
        memo = {id(m): m for name, m in self.named_children() if name not in self.trained_modules}
        ref = copy.deepcopy(self, memo)
        ref.eval()
        ref.requires_grad_(False)
        return ref

    def save_pretrained(self, directory: str | Path) -> None:
        """What was trained, each in its own library's format, plus ``unigrpo_policy.json``
        (the base directories and options):

        * ``lm/``: LoRA: peft's adapter (``PeftModel.from_pretrained(base_lm, dir)``);
          full: the LM and its tokenizer (``AutoModelForCausalLM.from_pretrained(dir)``);
        * ``transformer_lora/``: diffusers' LoRA file (``pipe.load_lora_weights(dir)``), or
          ``transformer/``: the full transformer (``<TransformerClass>.from_pretrained(dir)``).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        trained = self.trained_modules
        if "lm" in trained:
            if self.cfg.lora_rank > 0:
                save_peft_adapter(self.lm, d / "lm", self.cfg.lm)
            else:
                self.lm.save_pretrained(d / "lm")
                self.tokenizer.save_pretrained(d / "lm")
        if "transformer" in trained:
            if self.cfg.lora_rank > 0:
                config = self.transformer.peft_config["default"].to_dict()
                config["target_modules"] = sorted(config["target_modules"])  # a set: not JSON
                type(self.pipe).save_lora_weights(d / "transformer_lora",
                                                  transformer_lora_layers=lora_state_dict(self.transformer),
                                                  transformer_lora_adapter_metadata=config)
            else:
                self.transformer.save_pretrained(d / "transformer")
        saved = {k: getattr(self.cfg, k) for k in _SAVED_KEYS}
        atomic_write_text(d / POLICY_FILE, json.dumps({"type": "lm+diffusers", "model": saved}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> LMDiffusersPolicy:
        d = Path(directory)
        try:
            saved = json.loads((d / POLICY_FILE).read_text())["model"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{d}: not a saved lm+diffusers policy ({POLICY_FILE}: {e})") from None
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        cfg = ModelConfig(type="lm+diffusers", device=str(device), **{k: v for k, v in saved.items() if k in known})
        policy = build_policy(cfg, torch.device(device))
        policy.load_weights(d)
        return policy

    def load_weights(self, directory: str | Path) -> None:
        """Load what :meth:`save_pretrained` wrote into these models, in place (the base
        models are not reloaded); every tensor checked finite."""
        d = Path(directory)
        trained = self.trained_modules
        if "lm" in trained:
            if self.cfg.lora_rank > 0:
                load_lora_state_dict(self.lm, read_peft_adapter(_read(d / "lm" / PEFT_WEIGHTS)), str(d / "lm"))
            else:
                self._load_full(self.lm, d / "lm")
        if "transformer" in trained:
            if self.cfg.lora_rank > 0:
                state = _read(d / "transformer_lora" / TRANSFORMER_LORA_FILE)
                load_lora_state_dict(self.transformer,
                                     {k.removeprefix("transformer."): v for k, v in state.items()},
                                     str(d / "transformer_lora"))
            else:
                self._load_full(self.transformer, d / "transformer")

    def _load_full(self, module: nn.Module, path: Path) -> None:
        try:
            loaded = type(module).from_pretrained(path, local_files_only=True, dtype=module.dtype)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load the saved weights ({e})") from None
        state = loaded.state_dict()
        check_finite(state, str(path))
        module.load_state_dict(state)


class DisabledAdapterReference:
    """The frozen reference of a LoRA policy: the same models with adapters disabled.
    Every method call runs without grad and with the adapters off; attributes pass through."""

    def __init__(self, policy: LMDiffusersPolicy) -> None:
        self._policy = policy

    def __getattr__(self, name: str):
        attr = getattr(self._policy, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with torch.no_grad(), adapters_disabled(self._policy.trained_modules.values()):
                return attr(*args, **kwargs)
        return call


def _read(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the saved policy is incomplete)")
    state = read_safetensors(path)
    check_finite(state, str(path))
    return state


def build_policy(cfg: ModelConfig, device: torch.device) -> LMDiffusersPolicy:
    """Load ``cfg.lm`` and ``cfg.pipeline`` (local directories) onto ``device``."""
    device = torch.device(device)
    dtype = _dtype(cfg.dtype, device)
    lm_dir, pipeline_dir = _local_dir(cfg.lm, "model.lm"), _local_dir(cfg.pipeline, "model.pipeline")
    lm, tokenizer = _load_lm(lm_dir, dtype)
    pipe = _load_pipeline(pipeline_dir, dtype)
    pipe.set_progress_bar_config(disable=True)
    lm.to(device)
    pipe.to(device)
    cfg = dataclasses.replace(cfg, lm=str(lm_dir), pipeline=str(pipeline_dir))
    return LMDiffusersPolicy(lm, tokenizer, pipe, cfg)


def load_policy(model: ModelConfig, device: torch.device | str = "cpu") -> LMDiffusersPolicy:
    """The ``lm+diffusers`` loader: ``model.checkpoint`` (a saved policy, run or checkpoint
    directory) when given, else ``model.lm`` + ``model.pipeline`` as they are."""
    if model.checkpoint:
        from ..train.checkpointing import resolve_policy_dir

        return LMDiffusersPolicy.from_pretrained(resolve_policy_dir(model.checkpoint)[0], device)
    return build_policy(model, torch.device(device))
