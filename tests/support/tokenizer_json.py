"""HuggingFace ``tokenizer.json`` fixtures for Llama 3, built from the tiktoken ``tokenizer.model``.

* :func:`llama3_tokenizer_json` is the ``tokenizer.json`` of Meta's HuggingFace release of Llama 3
  (what transformers' TikTokenConverter produces, with Meta's post-processor): a byte-level BPE
  over the 128000 ranks, vocabulary in GPT-2's byte-to-character mapping, ``ignore_merges``, the
  converter's merges (:func:`support.llama3_vocab.tiktoken_merges`), Meta's split pattern, and
  the 256 special tokens as added tokens (ids 128000..128255, not in ``model.vocab``).
* :func:`write_llama3_tokenizer_files` writes a HuggingFace-style tokenizer directory around it
  (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
  ``generation_config.json``) as Llama 3.1 Instruct's repository has them.

The vocabulary and merges are computed once per process; each call builds a fresh dict, so a
test may change it (to make a broken file) without affecting others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from support.llama3_vocab import BOS_ID, META_PATTERN, llama3_vocab

__all__ = ["LLAMA3_CHAT_TEMPLATE", "llama3_tokenizer_json", "write_llama3_tokenizer_files"]

BOS = "<|begin_of_text|>"

#: Llama 3 Instruct's chat template (tokenizer_config.json's ``chat_template``).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _added_token(id: int, content: str) -> dict:
    return {"id": id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def llama3_tokenizer_json(tiktoken_path, merges_format: str = "lists") -> dict:
    """Llama 3's ``tokenizer.json`` as a dict. ``merges_format``: ``"lists"`` (``[["Ġ", "t"],
    ...]``, as tokenizers >= 0.20 writes them) or ``"strings"`` (``["Ġ t", ...]``, as in Meta's
    2024 release and older tokenizers)."""
    if merges_format not in ("lists", "strings"):
        raise ValueError(f"merges_format must be 'lists' or 'strings', not {merges_format!r}")
    vocab = llama3_vocab(tiktoken_path)
    merges = ([[a, b] for a, b in vocab.merges] if merges_format == "lists"
              else [f"{a} {b}" for a, b in vocab.merges])
    byte_level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(id, text) for text, id in vocab.specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": META_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}}},
        ]},
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {token: rank for rank, token in enumerate(vocab.tokens)},
            "merges": merges,
        },
    }


def write_llama3_tokenizer_files(
    directory, tiktoken_path, *,
    eos_token: str = "<|eot_id|>",
    generation_eos: Sequence[int] = (128001, 128008, 128009),
    merges_format: str = "lists",
    tokenizer_json: Optional[dict] = None,
    chat_template: Optional[str] = LLAMA3_CHAT_TEMPLATE,
) -> Path:
    """Write a HuggingFace Llama 3 tokenizer into ``directory`` (created if needed) and return it:
    ``tokenizer.json`` (``tokenizer_json`` if given, else :func:`llama3_tokenizer_json`),
    ``tokenizer_config.json`` (PreTrainedTokenizerFast, bos ``<|begin_of_text|>``, ``eos_token``,
    the special tokens in ``added_tokens_decoder``, ``chat_template`` unless None),
    ``special_tokens_map.json`` and ``generation_config.json`` (bos 128000, ``eos_token_id``
    the list ``generation_eos``, or one int if it has one element)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = tokenizer_json if tokenizer_json is not None else llama3_tokenizer_json(tiktoken_path, merges_format)
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    vocab = llama3_vocab(tiktoken_path)
    config = {
        "added_tokens_decoder": {str(id): {k: v for k, v in _added_token(id, text).items() if k != "id"}
                                 for text, id in vocab.specials},
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "eos_token": eos_token,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": {"content": BOS, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False},
                    "eos_token": {"content": eos_token, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False}}, indent=2), encoding="utf-8")
    eos_ids = list(generation_eos)
    generation = {"bos_token_id": BOS_ID, "do_sample": True,
                  "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids, "temperature": 0.6, "top_p": 0.9,
                  "transformers_version": "4.43.0.dev0"}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    return directory
