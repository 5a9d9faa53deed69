"""Chat templates: a conversation (``[{"role", "content"}, ...]``) as the prompt's token ids.

Built in, token for token as Meta's reference code builds them:

* ``llama2``: ``chat_completion`` of Meta's llama repository: each finished exchange is
  ``BOS [INST] {user} [/INST] {assistant} EOS``, the last user turn ``BOS [INST] {user} [/INST]``,
  and a system message goes in ``<<SYS>>\\n...\\n<</SYS>>\\n\\n`` before the first user turn.
* ``llama3``: Meta's ``ChatFormat``: ``<|begin_of_text|>``, then per message
  ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``, then the assistant's
  header.

Any other template is Jinja2 (the model's own, from GGUF ``tokenizer.chat_template`` or an
exported checkpoint's ``tokenizer_config.json``, or a file), rendered in jinja2's sandbox as
transformers renders it (``messages``, ``bos_token``, ``eos_token``, ``add_generation_prompt``)
and tokenized with special tokens recognised.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from .errors import ArgumentError, TokenizerError

__all__ = ["ChatTemplate", "BUILTIN_TEMPLATES", "check_messages", "resolve_template"]

BUILTIN_TEMPLATES = ("llama2", "llama3")
ROLES = ("system", "user", "assistant")

_B_INST, _E_INST = "[INST]", "[/INST]"
_B_SYS, _E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def check_messages(messages: Any) -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` with known roles and string contents
    (OpenAI's content parts of type text are joined)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ArgumentError("messages must be a non-empty list of {role, content} objects")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise ArgumentError(f"messages[{i}] must have a role of {', '.join(ROLES)}, got {m!r}"[:300])
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ArgumentError(f"messages[{i}].content parts must be of type text")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ArgumentError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        checked.append({"role": m["role"], "content": content})
    return checked


def _llama2(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    dialog = list(messages)
    if dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise ArgumentError("a system message must be followed by a user message")
        dialog = [{"role": dialog[1]["role"],
                   "content": _B_SYS + dialog[0]["content"] + _E_SYS + dialog[1]["content"]}] + dialog[2:]
    roles = [m["role"] for m in dialog]
    if roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]):
        raise ArgumentError("the llama2 template needs user and assistant turns alternating, starting with user "
                            "(after an optional system message)")
    if dialog[-1]["role"] != "user":
        raise ArgumentError("the llama2 template needs the last message to be the user's")
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += tokenizer.encode(f"{_B_INST} {prompt['content'].strip()} {_E_INST} {answer['content'].strip()} ",
                                bos=True, eos=True)
    ids += tokenizer.encode(f"{_B_INST} {dialog[-1]['content'].strip()} {_E_INST}", bos=True, eos=False)
    return ids


def _llama3(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    specials = getattr(tokenizer, "special_tokens", {})
    needed = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    if not all(s in specials for s in needed):
        raise TokenizerError("the llama3 chat template needs Llama 3's special tokens, which this tokenizer lacks")
    begin, start, end, eot = (specials[s] for s in needed)

    def header(role: str) -> list[int]:
        return [start] + tokenizer.encode(role, bos=False) + [end] + tokenizer.encode("\n\n", bos=False)

    ids = [begin]
    for m in messages:
        ids += header(m["role"]) + tokenizer.encode(m["content"].strip(), bos=False) + [eot]
    return ids + header("assistant")


class ChatTemplate:
    """A template by name (``llama2``, ``llama3``) or Jinja2 source; :meth:`apply` gives the
    prompt's token ids."""

    def __init__(self, name_or_source: str, description: Optional[str] = None) -> None:
        self.builtin = name_or_source if name_or_source in BUILTIN_TEMPLATES else None
        self.source = None if self.builtin else name_or_source
        self.description = description or self.builtin or "jinja2 template"
        self._compiled: Any = None
        if self.source is not None:
            try:
                from jinja2.exceptions import TemplateError
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                raise ArgumentError("Jinja2 chat templates need jinja2: pip install 'llama2rs[server]'") from None

            def raise_exception(message: str) -> None:
                raise ArgumentError(f"the chat template refused the messages: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            try:
                self._compiled = env.from_string(self.source)
            except TemplateError as exc:
                raise ArgumentError(f"invalid chat template ({self.description}): {exc}") from None

    def render(self, tokenizer: Any, messages: list[dict[str, str]]) -> str:
        """The Jinja2 template's text for ``messages`` (with the generation prompt)."""
        from jinja2.exceptions import TemplateError

        def piece(id: int) -> str:  # llama2.c writes BOS as "\n<s>\n": the template wants "<s>"
            return tokenizer.id_to_piece(id).strip() if id >= 0 else ""

        try:
            return str(self._compiled.render(messages=messages, add_generation_prompt=True,
                                             bos_token=piece(tokenizer.bos_id), eos_token=piece(tokenizer.eos_id)))
        except TemplateError as exc:
            raise ArgumentError(f"the chat template failed ({self.description}): {exc}") from None

    def apply(self, tokenizer: Any, messages: Any) -> list[int]:
        messages = check_messages(messages)
        if self.builtin == "llama2":
            return _llama2(tokenizer, messages)
        if self.builtin == "llama3":
            return _llama3(tokenizer, messages)
        text = self.render(tokenizer, messages)
        if hasattr(tokenizer, "special_tokens"):  # byte-level BPE: the template writes its specials
            return list(tokenizer.encode(text, bos=False, special=True))
        return _sentencepiece_with_markers(tokenizer, text)


def _sentencepiece_with_markers(tokenizer: Any, text: str) -> list[int]:
    """A rendered template for a sentencepiece vocabulary: ``<s>`` and ``</s>`` written in the
    text become BOS and EOS, the rest is encoded piece by piece (as transformers does)."""
    ids: list[int] = []
    rest = text
    while rest:
        cuts = [(rest.find(mark), mark) for mark in ("<s>", "</s>") if mark in rest]
        at, mark = min(cuts) if cuts else (len(rest), "")
        if rest[:at]:
            ids += tokenizer.encode(rest[:at], bos=False)
        if mark:
            ids.append(tokenizer.bos_id if mark == "<s>" else tokenizer.eos_id)
        rest = rest[at + len(mark):]
    return ids


def resolve_template(choice: Optional[str], model_template: Optional[str], tokenizer: Any) -> ChatTemplate:
    """The template to use: ``choice`` (a built-in name, or a file of Jinja2), else the
    model's own, else ``llama3`` for a vocabulary with Llama 3's specials and ``llama2`` for
    the rest."""
    if choice:
        if choice in BUILTIN_TEMPLATES:
            return ChatTemplate(choice)
        if os.path.isfile(choice):
            with open(choice, encoding="utf-8") as handle:
                return ChatTemplate(handle.read(), f"template file {choice}")
        raise ArgumentError(f"--chat-template must be {' or '.join(BUILTIN_TEMPLATES)} or a Jinja2 file, got {choice!r}")
    if model_template:
        return ChatTemplate(model_template, "the model's chat template")
    if "<|start_header_id|>" in getattr(tokenizer, "special_tokens", {}):
        return ChatTemplate("llama3")
    return ChatTemplate("llama2")

