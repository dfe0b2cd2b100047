"""A word-level Hugging Face tokenizer over the shapes vocabulary.

A ``tokenizers`` WordLevel model (whitespace split, special tokens first, ids
fixed by :func:`unigrpo.shapes.vocabulary`) wrapped as a
``transformers.PreTrainedTokenizerFast`` with left padding, saved as
``tokenizer.json`` (+ ``tokenizer_config.json``) by ``save_pretrained``.
Unknown words would map to ``<unk>``; :func:`encode_strict` refuses them
instead, naming the words, since the model never saw ``<unk>`` in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import vocab as shapes_vocab

__all__ = ["build_tokenizer", "load_tokenizer", "encode_strict", "special_token_ids"]

_ROLES = {"pad_token": shapes_vocab.PAD, "bos_token": shapes_vocab.BOS, "eos_token": shapes_vocab.EOS,
          "unk_token": shapes_vocab.UNK}
_EXTRA = (shapes_vocab.THINK, shapes_vocab.END_THINK, shapes_vocab.IMAGE, shapes_vocab.END_IMAGE)


def build_tokenizer(words: Sequence[str] | None = None):
    """A ``PreTrainedTokenizerFast`` over ``words`` (default: the shapes
    vocabulary; the special tokens must come first, as there)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = tuple(shapes_vocab.vocabulary() if words is None else words)
    if tuple(words[: len(shapes_vocab.SPECIAL_TOKENS)]) != shapes_vocab.SPECIAL_TOKENS:
        raise ValueError(f"words must start with the special tokens {shapes_vocab.SPECIAL_TOKENS}")
    if len(set(words)) != len(words):
        raise ValueError("words must be unique")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=shapes_vocab.UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=list(_EXTRA),
                                   padding_side="left", model_max_length=512, clean_up_tokenization_spaces=False,
                                   **_ROLES)
    return fast


def load_tokenizer(directory: str | Path):
    """Load a tokenizer saved by ``save_pretrained`` (``tokenizer.json``), left padding."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(directory))
    fast.padding_side = "left"
    return fast


def special_token_ids(tokenizer) -> dict[str, int]:
    """Role name -> id for the eight special tokens (``pad``, ``bos``, ..., ``end_image``)."""
    names = {"pad": shapes_vocab.PAD, "bos": shapes_vocab.BOS, "eos": shapes_vocab.EOS, "unk": shapes_vocab.UNK,
             "think": shapes_vocab.THINK, "end_think": shapes_vocab.END_THINK, "image": shapes_vocab.IMAGE,
             "end_image": shapes_vocab.END_IMAGE}
    out = {}
    for role, token in names.items():
        i = tokenizer.convert_tokens_to_ids(token)
        if i is None or (token != shapes_vocab.UNK and i == tokenizer.unk_token_id):
            raise ValueError(f"tokenizer has no special token {token!r}")
        out[role] = int(i)
    return out


def encode_strict(tokenizer, text: str) -> list[int]:
    """Ids of the whitespace-separated words of ``text`` (no special tokens added).
    Raises ``ValueError`` naming every word outside the vocabulary."""
    vocab = tokenizer.get_vocab()
    words = text.split()
    unknown = [w for w in words if w not in vocab]
    if unknown:
        raise ValueError(f"unknown token(s) {sorted(set(unknown))} in {text!r}: not in the model's "
                         f"{len(vocab)}-word vocabulary")
    return [vocab[w] for w in words]
