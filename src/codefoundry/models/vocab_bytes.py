"""Token ids to bytes: the byte string each id of a `tokenizers.Tokenizer` stands for, so generated ids are
decoded, streamed and matched against stop strings as bytes (a character split across tokens is whole
only once its last byte has come).

Three kinds of vocabulary are read piece by piece, without the tokenizer's decoder:

- byte-level BPE (GPT-2, our tokenizer, Qwen2, Llama 3): each character of a piece stands for one byte;
- SentencePiece-style (Llama 2, Mistral; a `Metaspace` decoder, or `Replace("▁", " ")`): "▁" is a space,
  the rest of a piece is its UTF-8 text, and with a `ByteFallback` decoder `<0xNN>` is the byte 0xNN;
- anything else: the decoder's text of the id alone.

A SentencePiece decoder drops the space of the first word of a whole text (the space its pre-tokenizer
put there). The table keeps it: generated ids continue a prompt, where a word-initial "▁" is a real
space (`"def" + "▁foo"` is "def foo"). Decoding one id alone lost it, so completions ran words together
and a stop string starting with a space never matched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

__all__ = ["decode", "decode_after", "piece", "token_bytes"]

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level mapping, inverted: printable bytes stand for themselves, the other 68 bytes
    for the characters 256, 257, ... in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: b for b in printable} | {b: 256 + i for i, b in enumerate(others)}
    return {chr(c): b for b, c in chars.items()}


def _decoder_steps(tokenizer) -> list[dict] | None:
    """The tokenizer's decoder as a flat list of steps (a `Sequence` unrolled); None without a decoder."""
    decoder = tokenizer.decoder
    if decoder is None:
        return None
    steps, todo = [], [json.loads(decoder.__getstate__())]
    while todo:
        step = todo.pop(0)
        if step.get("type") == "Sequence":
            todo[:0] = step.get("decoders", [])
        else:
            steps.append(step)
    return steps


class _Pieces:
    """How the pieces of one vocabulary map to bytes (see the module's docstring)."""

    def __init__(self, tokenizer) -> None:
        steps = _decoder_steps(tokenizer)
        kinds = {s.get("type") for s in steps or ()}
        # No decoder: the pieces are taken as byte-level ones where they can be (as before there was one).
        self.byte_level = _byte_level_alphabet() if steps is None or "ByteLevel" in kinds else None
        self.byte_fallback = "ByteFallback" in kinds
        self.spaces: list[tuple[str, str]] = []  # (piece text, what it decodes to), e.g. ("▁", " ")
        for s in steps or ():
            pattern = s.get("pattern")
            if s.get("type") == "Metaspace":
                self.spaces.append((s.get("replacement") or "\u2581", " "))
            elif s.get("type") == "Replace" and isinstance(pattern, dict) and "String" in pattern:
                self.spaces.append((pattern["String"], s.get("content", "")))

    def bytes_of(self, piece: str) -> bytes | None:
        """The bytes of a vocabulary piece, or None when only the decoder can say."""
        if self.byte_level is not None:
            if all(c in self.byte_level for c in piece):
                return bytes(self.byte_level[c] for c in piece)
            return None
        if self.byte_fallback and (m := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(m[1], 16)])
        if self.spaces:
            for old, new in self.spaces:
                piece = piece.replace(old, new)
            return piece.encode()
        return None


_TABLES: dict[int, tuple[object, list[bytes]]] = {}  # id(tokenizer) -> (tokenizer kept alive, table)


def token_bytes(tokenizer) -> list[bytes]:
    """The UTF-8 bytes of every token id of a `tokenizers.Tokenizer` (added tokens as their text), so
    decoding is `b"".join(table[i] for i in ids).decode("utf-8", "replace")`. Cached per tokenizer."""
    hit = _TABLES.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    pieces = _Pieces(tokenizer)
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    table = []
    for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        piece = tokenizer.id_to_token(i) or ""
        raw = piece.encode() if piece in added else pieces.bytes_of(piece)
        table.append(raw if raw is not None else tokenizer.decode([i], skip_special_tokens=False).encode())
    _TABLES[id(tokenizer)] = (tokenizer, table)
    return table


def piece(table: list[bytes], i: int) -> bytes:
    """The bytes of id `i`; none for an id past the tokenizer's vocabulary (an imported checkpoint's
    padded embedding: Qwen2.5 has 151,936 rows for 151,665 tokens), which no text decodes to."""
    return table[i] if i < len(table) else b""


def decode(table: list[bytes], ids: Sequence[int]) -> str:
    """The text of `ids` given `token_bytes(tokenizer)` (invalid UTF-8 becomes U+FFFD; ids past the
    vocabulary add nothing)."""
    return b"".join(piece(table, i) for i in ids).decode("utf-8", "replace")


def decode_after(table: list[bytes], ids: Sequence[int], skip: int) -> str:
    """`decode`, without the first `skip` bytes (what `generate.heal_prompts` took off the prompt)."""
    return b"".join(piece(table, i) for i in ids)[skip:].decode("utf-8", "replace")
