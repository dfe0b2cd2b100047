"""Policies built from real model libraries: ``lm+diffusers`` (a transformers causal LM
that reasons + a diffusers flow-matching pipeline that draws), LoRA through peft."""
