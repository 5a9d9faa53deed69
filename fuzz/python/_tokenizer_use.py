"""Use a freshly read tokenizer a little, as a model would: a parsed vocabulary that loads but
breaks encoding or decoding is a reader bug too."""

from __future__ import annotations

from typing import Any

TEXT = "hello world, the\n\n caf\u00e9 <0x41> \x00\u2581\U0001f600 <|eot_id|>"


def use(tokenizer: Any) -> None:
    ids = tokenizer.encode(TEXT, bos=tokenizer.bos_id >= 0)
    if hasattr(tokenizer, "special_tokens"):  # a byte-level BPE: special tokens written in the text too
        ids += tokenizer.encode(TEXT, bos=False, special=True)
    tokenizer.decode(ids)
    stream = tokenizer.stream()
    for id in range(min(len(tokenizer), 300)):
        tokenizer.piece_bytes(None, id)
        stream.push(id)
    stream.flush()
