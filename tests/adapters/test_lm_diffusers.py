"""``model.type=lm+diffusers`` on tiny random-init models built and saved here: a Qwen2 LM,
SD3 and FLUX pipelines, a CLIP reward model, loaded through the same path the CLI takes."""

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from tiny_hf_models import save_clip, save_flux, save_lm, save_qwenimage, save_sd3  # noqa: E402
from tiny_runs import brightness as bright, stop_after  # noqa: E402

from unigrpo import ops  # noqa: E402
from unigrpo.adapters.lm_diffusers import LMDiffusersPolicy, load_policy  # noqa: E402
from unigrpo.policy import concat_tokens  # noqa: E402
from unigrpo.rewards import rewards_from_spec  # noqa: E402
from unigrpo.rollout import RolloutConfig, generate_episodes  # noqa: E402
from unigrpo.sampling import generate_reasoning  # noqa: E402
from unigrpo.task import ModelConfig  # noqa: E402
from unigrpo.train import Trainer, load_config  # noqa: E402
from unigrpo.train.__main__ import main as train_main  # noqa: E402

FAMILIES = ("sd3", "flux", "qwenimage")
#: LoRA on the attention and the output projection (the velocity's last layer)
TRANSFORMER_LORA = "to_q,to_k,to_v,to_out.0,proj_out"
PROMPTS = ["a red circle left of a blue square", "two green triangles"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"lm": save_lm(root / "lm"), "sd3": save_sd3(root / "sd3"), "flux": save_flux(root / "flux"),
            "qwenimage": save_qwenimage(root / "qwenimage"), "clip": save_clip(root / "clip"), "root": root}


def config(dirs, family="sd3", **kw):
    return ModelConfig(**{"type": "lm+diffusers", "lm": str(dirs["lm"]), "pipeline": str(dirs[family]),
                          "resolution": 32, **kw})


def rollout_cfg(**kw):
    return RolloutConfig(**{"num_generations": 2, "max_reasoning_tokens": 8, "num_inference_steps": 3, **kw})


def rounds(policy, seed=0, **kw):
    from unigrpo.rewards import WeightedRewards

    g = torch.Generator().manual_seed(seed)
    return generate_episodes(policy, PROMPTS, [{}, {}], WeightedRewards([("bright", bright, 1.0)]), rollout_cfg(**kw), g)


# ------------------------------------------------------------------ invariants
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [0, 4])
def test_recorded_logprobs_equal_recomputed(dirs, family, lora):
    """ratio == 1 at the first update: the rollout's log-probs, text and image, are what the
    training pass recomputes from the same states."""
    policy = load_policy(config(dirs, family, lora_rank=lora), "cpu")
    b = rounds(policy)
    start = b.reasoning_start
    text = policy.token_logprobs(b.ids, b.mask, b.temperature, start=start)
    assert (text - b.reasoning_logprobs).abs().max().item() < 1e-5
    ctx = policy.image_context(b.ids, b.mask)
    for k in range(b.sigmas.shape[0] - 1):
        x, x_next = b.latents[:, 0, k], b.latents[:, 0, k + 1]
        v = policy.velocity(x, b.sigmas[k], ctx)
        lp = ops.sde_step_logprob(x, x_next, v, b.sigmas[k].expand(len(x)), b.sigmas[k + 1].expand(len(x)),
                                  b.noise_level)
        assert (lp - b.step_logprobs[:, 0, k]).abs().max().item() < 1e-5
    assert b.images.shape == (4, 32, 32, 3) and b.images.dtype == torch.uint8


def test_cached_generation_equals_teacher_forcing(dirs):
    policy = load_policy(config(dirs), "cpu")
    batch = policy.encode_prompts(PROMPTS + ["x"])  # three prompt lengths: left padding
    assert len(set(batch.mask.sum(1).tolist())) == 3
    r = generate_reasoning(policy, batch.ids, batch.mask, max_new_tokens=16, temperature=1.0,
                           generator=torch.Generator().manual_seed(1))
    ids, mask = concat_tokens(batch.ids, batch.mask, r.ids, r.mask)
    teacher = policy.token_logprobs(ids, mask, 1.0, start=batch.ids.shape[1])
    assert (teacher - r.logprobs).abs().max().item() < 1e-5


def test_the_closing_tag_ends_the_reasoning(dirs):
    policy = load_policy(config(dirs), "cpu")
    close = policy.tokenizer.convert_tokens_to_ids("</think>")
    assert close in policy.stop_token_ids and policy.tokenizer.eos_token_id in policy.stop_token_ids
    batch = policy.encode_prompts(PROMPTS)
    # the LM wants </think> right away (a hook on its head: sampling only)
    hook = policy.lm.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([close]), torch.full((*out.shape[:-1], 1), 50.0)))
    try:
        r = generate_reasoning(policy, batch.ids, batch.mask, max_new_tokens=8, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert r.mask.sum(1).tolist() == [1, 1] and r.ids[:, 0].tolist() == [close, close]
    assert not bool(r.truncated.any())
    ids, mask = concat_tokens(batch.ids, batch.mask, r.ids, r.mask)
    assert policy.image_texts(ids, mask) == PROMPTS  # an empty plan: the bare prompt


def test_the_image_is_conditioned_on_the_reasoning(dirs):
    policy = load_policy(config(dirs, "flux"), "cpu")
    p = policy.encode_prompts(["a red circle", "a red circle"])
    plans = policy.tokenizer(["put it left", "make it huge"], add_special_tokens=False, padding=True,
                             return_tensors="pt")
    ids, mask = concat_tokens(p.ids, p.mask, plans["input_ids"], plans["attention_mask"].bool())
    texts = policy.image_texts(ids, mask)
    assert texts == ["a red circle. put it left", "a red circle. make it huge"]
    x = torch.randn(1, *policy.latent_shape).expand(2, -1, -1, -1)
    v = policy.velocity(x, torch.tensor(0.7), policy.image_context(ids, mask))
    assert (v[0] - v[1]).abs().max().item() > 1e-4
    bare = policy.encode_prompts(["a red circle"], reasoning=False)
    assert policy.image_texts(bare.ids, bare.mask) == ["a red circle"]


def _pipeline(dirs, family):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(dirs[family])
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: each pipeline's call without guidance (Qwen-Image's true CFG needs a negative prompt: none given)
NO_GUIDANCE = {"sd3": {"guidance_scale": 1.0}, "flux": {"guidance_scale": 1.0}, "qwenimage": {}}


@pytest.mark.parametrize("family", FAMILIES)
def test_schedules_follow_each_pipelines_scheduler(dirs, family):
    policy, pipe = load_policy(config(dirs, family), "cpu"), _pipeline(dirs, family)
    captured = {}

    def grab(*args, **kwargs):  # the pipeline's own call: the sigmas it denoises with
        captured["sigmas"] = pipe.scheduler.sigmas.clone()
        return kwargs.get("callback_kwargs", args[-1] if args else {})
    pipe(PROMPTS[0], num_inference_steps=5, height=32, width=32, output_type="latent", callback_on_step_end=grab,
         **NO_GUIDANCE[family])
    assert torch.allclose(policy.sigma_schedule(5), captured["sigmas"].float(), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_velocity_and_decoding_match_the_pipelines_own(dirs, family):
    """Deterministic Euler steps with the policy reproduce the pipeline's own latents, and
    the policy's decoding its images: the time, velocity, packing and VAE conventions are the
    pipeline's."""
    policy, pipe = load_policy(config(dirs, family), "cpu"), _pipeline(dirs, family)
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    packed = x if family == "sd3" else pipe._pack_latents(x, 1, *x.shape[1:])
    run = dict(num_inference_steps=4, height=32, width=32, latents=packed, **NO_GUIDANCE[family])
    out = pipe(PROMPTS[0], output_type="latent", **run).images
    if family != "sd3":
        out = pipe._unpack_latents(out, 32, 32, pipe.vae_scale_factor)
        out = out[:, :, 0] if out.dim() == 5 else out  # Qwen-Image's frame axis
    bare = policy.encode_prompts([PROMPTS[0]], reasoning=False)
    ctx = policy.image_context(bare.ids, bare.mask)
    s = policy.sigma_schedule(4)
    with torch.no_grad():
        for k in range(4):
            x = x + (s[k + 1] - s[k]) * policy.velocity(x, s[k], ctx)
    assert torch.allclose(x, out, atol=1e-4), (x - out).abs().max()
    images = pipe(PROMPTS[0], output_type="pt", **run).images  # (1, 3, H, W) in [0, 1]
    ours = policy.latents_to_images(x).permute(0, 3, 1, 2).float() / 255
    assert (ours - images).abs().max() <= 1.5 / 255


def test_evaluation_guidance_is_the_pipelines_own_cfg(dirs):
    """task.eval_guidance_scale on SD3: the library's guided ODE sampler lands where the
    pipeline's own classifier-free guidance does (negative prompt "")."""
    from diffusers import StableDiffusion3Pipeline

    from unigrpo.rollout import denoise

    policy = load_policy(config(dirs, "sd3"), "cpu")
    pipe = StableDiffusion3Pipeline.from_pretrained(dirs["sd3"])
    pipe.set_progress_bar_config(disable=True)
    x1 = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    out = pipe(PROMPTS[0], negative_prompt="", num_inference_steps=4, height=32, width=32, guidance_scale=3.0,
               latents=x1, output_type="latent").images
    bare, empty = policy.encode_prompts([PROMPTS[0]], reasoning=False), policy.encode_prompts([""], reasoning=False)
    with torch.no_grad():
        traj = denoise(policy, policy.image_context(bare.ids, bare.mask), policy.sigma_schedule(4), 0.0, x1, None,
                       uncond=policy.image_context(empty.ids, empty.mask), guidance_scale=3.0)
    assert torch.allclose(traj.latents[:, -1], out, atol=1e-4), (traj.latents[:, -1] - out).abs().max()


# ------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_adapters_and_the_reference_is_the_base_model(dirs, family):
    policy = load_policy(config(dirs, family, lora_rank=4), "cpu")
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert {n.split(".")[0] for n in trained} == {"lm", "transformer"}
    with torch.no_grad():  # move the adapters off zero, as training would
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ref = policy.reference_copy()
    base = load_policy(config(dirs, family), "cpu")
    b = base.encode_prompts(PROMPTS)
    x = torch.randn(2, *policy.latent_shape)
    ctx = base.image_context(b.ids, b.mask)
    v_base = base.velocity(x, torch.tensor(0.5), ctx)
    assert torch.allclose(ref.velocity(x, torch.tensor(0.5), ref.image_context(b.ids, b.mask)), v_base, atol=1e-6)
    assert not torch.allclose(policy.velocity(x, torch.tensor(0.5), ctx), v_base, atol=1e-3)
    lp_base = base.token_logprobs(b.ids, b.mask)
    assert torch.allclose(ref.token_logprobs(b.ids, b.mask), lp_base, atol=1e-6)
    assert not torch.allclose(policy.token_logprobs(b.ids, b.mask), lp_base, atol=1e-3)
    # gradients reach the adapters only
    loss = policy.velocity(x, torch.tensor(0.5), ctx).square().mean() + policy.token_logprobs(b.ids, b.mask).sum()
    loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in policy.parameters())
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) < 0.2 * sum(
        p.numel() for p in policy.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_switches_keep_the_gradients(dirs, family):
    """Gradient checkpointing changes memory, not gradients; bf16 weights keep fp32 adapters
    and still give ratio 1 at the first update."""
    from unigrpo.train.advantages import group_advantages
    from unigrpo.train.losses import LossConfig, TokenNorm, joint_loss

    def grads(**kw):
        torch.manual_seed(0)
        policy = load_policy(config(dirs, family, lora_rank=4, **kw), "cpu")
        b = rounds(policy)
        adv = group_advantages(b.rewards + torch.arange(len(b)).float(), b.group_ids)
        policy.train()
        loss, stats = joint_loss(policy, policy.reference_copy(), b, adv, LossConfig(),
                                 TokenNorm(1, float(b.reasoning_mask.sum()), 8))
        loss.backward()
        return policy, stats, {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    _, _, plain = grads()
    checkpointed, _, saved = grads(gradient_checkpointing=True)
    assert checkpointed.transformer.gradient_checkpointing
    assert getattr(checkpointed.lm, "is_activation_checkpointing", None) or checkpointed.lm.is_gradient_checkpointing
    assert plain.keys() == saved.keys() and all(torch.allclose(plain[n], saved[n], atol=1e-6) for n in plain)
    bf16, stats, got = grads(dtype="bfloat16")
    assert bf16.lm.dtype == torch.bfloat16 and bf16.transformer.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.parameters() if p.requires_grad)
    assert all(torch.isfinite(g).all() for g in got.values())
    # bf16: the cached decode and the teacher-forced pass round differently; within one bf16 ulp of 1
    assert abs(float(stats["text/ratio_mean"]) - 1) < 2**-8 and abs(float(stats["image/ratio_mean"]) - 1) < 2**-8


def test_full_finetuning_reference_is_a_copy_sharing_the_frozen_parts(dirs):
    policy = load_policy(config(dirs, "sd3"), "cpu")
    ref = policy.reference_copy()
    assert ref.vae is policy.vae and ref.text_encoders[0] is policy.text_encoders[0]
    assert ref.transformer is not policy.transformer and ref.lm is not policy.lm
    assert not any(p.requires_grad for p in ref.parameters() if p.data_ptr() not in
                   {q.data_ptr() for q in policy.vae.parameters()})
    assert not any(p.requires_grad for p in policy.vae.parameters())
    assert all(p.requires_grad for p in policy.transformer.parameters())


# ----------------------------------------------------------------- save / load
@pytest.mark.parametrize("lora", [0, 4])
def test_save_loads_back_bit_exact_and_into_plain_libraries(dirs, tmp_path, lora):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy = load_policy(config(dirs, "sd3", lora_rank=lora), "cpu")
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    policy.save_pretrained(tmp_path / "policy")
    again = LMDiffusersPolicy.from_pretrained(tmp_path / "policy")
    mine, theirs = policy.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    # plain transformers / peft / diffusers read what was saved
    b = policy.encode_prompts(PROMPTS)
    pos = (b.mask.long().cumsum(1) - 1).clamp(min=0)
    if lora:
        lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dirs["lm"]), tmp_path / "policy" / "lm")
        pipe = StableDiffusion3Pipeline.from_pretrained(dirs["sd3"])
        pipe.load_lora_weights(tmp_path / "policy" / "transformer_lora")
        transformer = pipe.transformer
    else:
        lm = AutoModelForCausalLM.from_pretrained(tmp_path / "policy" / "lm")
        transformer = SD3Transformer2DModel.from_pretrained(tmp_path / "policy" / "transformer")
    with torch.no_grad():
        logits = lm(input_ids=b.ids, attention_mask=b.mask.long(), position_ids=pos).logits
        ours = policy.lm(input_ids=b.ids, attention_mask=b.mask.long(), position_ids=pos).logits
        assert torch.allclose(logits[b.mask], ours[b.mask], atol=1e-5)
        x = torch.randn(2, *policy.latent_shape)
        ctx = policy.image_context(b.ids, b.mask)
        v = transformer(hidden_states=x, timestep=torch.full((2,), 500.0), encoder_hidden_states=ctx.embeds,
                        pooled_projections=ctx.pooled, return_dict=False)[0]
        assert torch.allclose(v, policy.velocity(x, torch.tensor(0.5), ctx), atol=1e-5)
    saved = json.loads((tmp_path / "policy" / "unigrpo_policy.json").read_text())
    assert saved["model"]["lora_rank"] == lora and saved["model"]["pipeline"] == str(dirs["sd3"].resolve())


# ---------------------------------------------------------------------- errors
def test_bad_directories_and_options_are_named(dirs, tmp_path):
    with pytest.raises(ValueError, match="model.lm must be a local directory"):
        load_policy(ModelConfig(type="lm+diffusers", pipeline=str(dirs["sd3"])), "cpu")
    with pytest.raises(ValueError, match="model.lm: no such directory"):
        load_policy(config(dirs, lm=str(tmp_path / "nope")), "cpu")
    with pytest.raises(ValueError, match="model.lm: .* is not a transformers causal LM"):
        load_policy(config(dirs, lm=str(dirs["sd3"])), "cpu")
    with pytest.raises(ValueError, match="model.pipeline: .* is not a diffusers pipeline directory"):
        load_policy(config(dirs, pipeline=str(dirs["lm"])), "cpu")
    with pytest.raises(ValueError, match="model.resolution must be a multiple of 4"):
        load_policy(config(dirs, resolution=30), "cpu")
    with pytest.raises(ValueError, match="model.lora_lm_modules='nothing_here'"):
        load_policy(config(dirs, lora_rank=2, lora_lm_modules="nothing_here"), "cpu")
    with pytest.raises(ValueError, match="model.image_prompt must contain"):
        load_policy(config(dirs, image_prompt="{reasoning}"), "cpu")


def test_a_scheduler_that_is_not_flow_matching_is_refused(dirs, tmp_path):
    import shutil

    from diffusers import EulerDiscreteScheduler

    bad = tmp_path / "sd3-euler"
    shutil.copytree(dirs["sd3"], bad)
    shutil.rmtree(bad / "scheduler")
    EulerDiscreteScheduler().save_pretrained(bad / "scheduler")
    index = json.loads((bad / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.pipeline: the scheduler is EulerDiscreteScheduler, not flow matching"):
        load_policy(config(dirs, pipeline=str(bad)), "cpu")


def test_policy_parts_on_different_devices_are_refused(dirs):
    from diffusers import DiffusionPipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(dirs["lm"]).to("meta")  # a stand-in for another device
    pipe = DiffusionPipeline.from_pretrained(dirs["sd3"])
    with pytest.raises(ValueError, match="model.lm and model.pipeline are on different devices"):
        LMDiffusersPolicy(lm, AutoTokenizer.from_pretrained(dirs["lm"]), pipe, config(dirs))


# --------------------------------------------------------------------- rewards
def test_clip_rewards(dirs):
    clip = rewards_from_spec("clip", model_dir=str(dirs["clip"]))
    pick = rewards_from_spec("pickscore", model_dir=str(dirs["clip"]))
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    prompts = ["a red circle", "two green triangles", "a cat"]
    c = clip(images, prompts, [{}] * 3).total
    p = pick(images, prompts, [{}] * 3).total
    assert c.shape == (3,) and bool((c.abs() <= 1 + 1e-6).all())
    scale = pick.rewards[0][1].model.logit_scale.exp().item()
    assert torch.allclose(p, c * scale, atol=1e-4)
    # the reward is the cosine of the model's own embeddings, pair by pair
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(dirs["clip"]), CLIPProcessor.from_pretrained(dirs["clip"])
    inputs = proc(text=prompts[:1], images=[images[0].numpy()], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    expected = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert abs(c[0].item() - expected) < 1e-5
    with pytest.raises(ValueError, match="task.reward_model must be a local directory"):
        rewards_from_spec("clip")
    with pytest.raises(ValueError, match="task.reward_model: .* is not a CLIP model"):
        rewards_from_spec("clip", model_dir=str(dirs["lm"]))
    with pytest.raises(ValueError, match=r"images must be uint8 \(B, H, W, 3\)"):
        clip.rewards[0][1](images.permute(0, 3, 1, 2), prompts, [{}] * 3)


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_trains_saves_and_resumes_exactly(dirs, tmp_path, family):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["a red circle", "two green triangles", "a blue square", "a yellow star",
                                  "a purple cat", "an orange dog"]) + "\n")
    common = ["model.type=lm+diffusers", f"model.lm={dirs['lm']}", f"model.pipeline={dirs[family]}",
              "model.resolution=32", "model.lora_rank=4", "task=prompts", f"task.file={prompts}",
              "task.reward=clip", f"task.reward_model={dirs['clip']}", "task.heldout_fraction=0.34",
              "task.eval_steps=2", "rollout.num_generations=2", "rollout.num_inference_steps=3",
              "rollout.max_reasoning_tokens=6", "train.prompts_per_iteration=2", "train.minibatch_size=4",
              "train.save_every=2", "train.eval_every=100", "optim.warmup_steps=0", "optim.lr=1e-3",
              "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train_main(common + [f"train.output_dir={full}", "train.iterations=4"]) == 0
    # the same run stopped right after its iteration-2 checkpoint, then resumed from the CLI
    cfg = load_config(None, [a for a in common if a != "--no-progress"]
                      + [f"train.output_dir={cut}", "train.iterations=4"])
    part = Trainer(cfg, progress=False)
    part.train_iteration = stop_after(part, 2)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    assert train_main(["--resume", str(cut), "--no-progress"]) == 0
    rows = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = rows(full), rows(cut)
    assert len(a) == len(b) == 5 and a[-1]["iteration"] == 4  # the iteration-0 evaluation, then 1..4
    drop = ("train/iteration_s", "train/episodes_per_s", "train/rollout_s", "train/update_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop and not k.endswith("_s")} for r in h]  # noqa
    assert strip(a) == strip(b)
    assert a[-1]["eval/overall"] == b[-1]["eval/overall"]
    policy = sorted(full.glob("checkpoint-*"))[-1] / "policy"
    assert (policy / "lm" / "adapter_model.safetensors").is_file()
    assert (policy / "transformer_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (policy / "transformer").exists()  # LoRA saves the adapters, not the base


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_iterations_move_an_image_reward_the_way_it_points(dirs, tmp_path, family):
    # A tiny random VAE decodes every latent to nearly the same grey (within-group spread of
    # the brightness ~0.003), so the honest check is direction: the same LoRA run trained to
    # brighten and to darken must move held-out brightness apart, each its own way, by several
    # times that spread. A run that followed anything but the reward could not do both.
    from unigrpo.rewards import WeightedRewards
    from unigrpo.tasks import PromptsTask

    def run(sign):
        def signed(images, prompts, metadata):
            return sign * bright(images, prompts, metadata)
        task = PromptsTask(prompts=PROMPTS + ["a blue square", "a yellow star"], heldout=PROMPTS,
                           rewards=WeightedRewards([("bright", signed, 1.0)]))
        out = tmp_path / f"sign{sign}"
        cfg = load_config(None, ["model.type=lm+diffusers", "rollout.num_generations=4",
                                 "rollout.num_inference_steps=3", "rollout.timestep_fraction=1.0",
                                 "rollout.max_reasoning_tokens=4", "train.prompts_per_iteration=4",
                                 "train.minibatch_size=8", "optim.warmup_steps=0", "optim.lr=2e-2",
                                 "optim.lr_scheduler_type=constant_with_warmup", "loss.beta_v=0",
                                 "train.iterations=16", f"train.output_dir={out}", "task.eval_steps=3",
                                 "task.eval_size=0"])
        policy = load_policy(config(dirs, family, lora_rank=8, train="transformer",
                                    lora_transformer_modules=TRANSFORMER_LORA), "cpu")
        trainer = Trainer(cfg, task=task, policy=policy, progress=False)
        before = sign * task.evaluate(policy, None)["overall"]
        trainer.fit()
        spread = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])["reward/bright_std"]
        return before, sign * task.evaluate(policy, None)["overall"], spread

    before, brighter, spread = run(1)
    before_dark, darker, _ = run(-1)
    assert before == pytest.approx(before_dark)  # the same start
    assert brighter > before > darker
    assert brighter - darker > 3 * spread, (before, brighter, darker, spread)
