"""Text in, text out: plain and fill-in-the-middle completion over `codefoundry.models.generate`.

A non-None suffix makes a PSM prompt (`<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>`) and the model's
middle ends at `<|endoftext|>`, `<|fim_pad|>` or `<|file_sep|>`; a plain prompt ends at `<|endoftext|>` or
`<|file_sep|>`. Prompts that do not fit `max_seq_len` with the requested new tokens are trimmed: the head
of a plain prompt, the far ends of a FIM prefix and suffix; new tokens past what the context leaves are not
generated, and stderr says so once (`complete_ids`). Stop strings cut the text before them, as
`truncate_at_stop` does, also while streaming.
"""

from __future__ import annotations

import codecs
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from codefoundry.models.backends.base import truncate_at_stop
from codefoundry.models.generate import (
    FIM_BANNED,
    FIM_STOPS,
    PLAIN_BANNED,
    PLAIN_STOPS,
    OnText,
    decode,
    generate,
    ids_of,
    padding_ids,
    token_bytes,
)
from codefoundry.models.sampling import child_seed
from codefoundry.models.tokenizer import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, plain_encoder, special_id
from codefoundry.models.transformer import Transformer
from codefoundry.models.vocab_bytes import piece

__all__ = ["check_utf8", "complete", "complete_ids", "fim_prompt_ids", "generate_command", "special_id"]


def fim_prompt_ids(tokenizer, prefix: str, suffix: str, budget: int | None = None) -> list[int]:
    """`<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>` (PSM) as ids; the model writes the middle. With a
    `budget`, at most that many ids: P keeps its end and S its start, P first (as `complete` trims, in
    `_fit`)."""
    ids, n_prefix = _fim_ids(tokenizer, prefix, suffix)
    return ids if budget is None else _fit(ids, n_prefix, budget)


_FIM = "fill-in-the-middle (a suffix)"


def _fim_ids(tokenizer, prefix: str, suffix: str) -> tuple[list[int], int]:
    enc = plain_encoder(tokenizer).encode_batch([prefix, suffix], add_special_tokens=False)
    ids = [
        special_id(tokenizer, FIM_PREFIX, _FIM), *enc[0].ids,
        special_id(tokenizer, FIM_SUFFIX, _FIM), *enc[1].ids,
        special_id(tokenizer, FIM_MIDDLE, _FIM),
    ]  # fmt: skip
    return ids, len(enc[0].ids)


# What a FIM prompt's suffix may take of the room while the prefix wants more: a quarter, or up to
# SUFFIX_FLOOR tokens (a line or two, never over half) when that is more. A middle depends most on the
# prefix's end (the `def` line, the docstring, the lines just above); the suffix's start mostly says
# where the middle stops, which its first lines tell. Split evenly, a 600-character docstring pushed the
# `def` line out of a 512-token context's prompt.
SUFFIX_SHARE, SUFFIX_FLOOR = 0.25, 32


def _fit(ids: list[int], n_prefix: int | None, budget: int) -> list[int]:
    """`ids` shortened to `budget` tokens: a plain prompt loses its head; a FIM prompt (n_prefix = the
    prefix's token count) loses the head of its prefix and the tail of its suffix, the suffix kept to
    SUFFIX_SHARE of the room (or SUFFIX_FLOOR tokens) while the prefix wants more; room one side leaves
    goes to the other."""
    if len(ids) <= budget:
        return ids
    if n_prefix is None:
        return ids[len(ids) - budget :]
    prefix, suffix = ids[1 : 1 + n_prefix], ids[2 + n_prefix : -1]
    room = max(0, budget - 3)
    keep_s = min(len(suffix), max(min(room // 2, SUFFIX_FLOOR), int(room * SUFFIX_SHARE)))
    keep_p = min(len(prefix), room - keep_s)
    keep_s = min(len(suffix), room - keep_p)
    return [ids[0], *prefix[len(prefix) - keep_p :], ids[1 + n_prefix], *suffix[:keep_s], ids[-1]]


def complete_ids(model: Transformer, tokenizer, prompts: list[list[int]], *, max_new_tokens: int,
                 stop_ids: Sequence[int] = (), stop: Sequence[str] = (), temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int | Sequence[int] | None = None, batch_size: int = 16, on_text: OnText | None = None,
                 fim_prefix_lengths: list[int | None] | None = None,
                 banned_ids: Sequence[int] = (), repetition_penalty: float = 1.0,
                 warn_trimmed: bool = True) -> list[str]:  # fmt: skip
    """The text each prompt (as ids) continues with, cut before any stop string. Prompts run in batches
    of similar length. max_new_tokens is first cut to what the model's max_seq_len leaves after a prompt
    of up to half of it, and a one-line warning on stderr says so (once per requested count and context
    length in a process); a prompt too long for the rest is trimmed (see `_fit`), and with `warn_trimmed`
    a one-line warning says that too (once per context length in a process; callers that hand over more
    context than fits on purpose turn it off). Ids past the tokenizer's vocabulary (`padding_ids`) are
    never drawn. With a seed, prompt i samples from its own stream (`sampling.child_seed(seed, i)`, or the
    i-th of one seed per prompt), so the texts do not depend on `batch_size` or on how prompts are batched."""
    cap = model.cfg.max_seq_len
    max_new = min(max_new_tokens, cap - 1)
    budget = max(cap - max_new, min(cap // 2, max(map(len, prompts), default=1)))
    max_new = min(max_new, cap - budget)
    if max_new < max_new_tokens:
        _warn_lowered(max_new_tokens, max_new, cap)
    lengths = fim_prefix_lengths or [None] * len(prompts)
    longest = max(map(len, prompts), default=0)
    if warn_trimmed and longest > budget:
        _warn_trimmed(longest, budget, cap)
    fitted = [_fit(p, n, budget) for p, n in zip(prompts, lengths, strict=True)]
    table = token_bytes(tokenizer)
    banned_ids = [*banned_ids, *padding_ids(table, model)]
    if isinstance(seed, int) or seed is None:
        seeds = None if seed is None else [child_seed(seed, i) for i in range(len(prompts))]
    elif len(seeds := list(seed)) != len(prompts):
        raise ValueError(f"complete_ids: seed must be an int or one int per prompt ({len(prompts)})")
    order = sorted(range(len(fitted)), key=lambda i: len(fitted[i]))
    texts: list[str] = [""] * len(fitted)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        streams = [_TextStream(table, stop, i, on_text) for i in chunk] if on_text else None
        out = generate(
            model, [fitted[i] or [special_id(tokenizer, EOT)] for i in chunk], max_new_tokens=max_new,
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            seed=None if seeds is None else [seeds[i] for i in chunk],
            stop_ids=stop_ids, stop_strings=stop, tokenizer=tokenizer, banned_ids=banned_ids,
            repetition_penalty=repetition_penalty,
            on_token=(lambda row, tok, s=streams: s[row].push(tok)) if streams else None,
        )  # fmt: skip
        for j, i in enumerate(chunk):
            texts[i] = truncate_at_stop(decode(table, out[j]), stop)
            if streams:
                streams[j].close()
    return texts


_WARNED: set[tuple[int, int]] = set()  # (max_new_tokens asked for, max_seq_len) already warned about
_WARNED_TRIMMED: set[int] = set()  # max_seq_len values a trimmed prompt was already reported for


def _warn_trimmed(longest: int, budget: int, cap: int) -> None:
    """Say once per context length that prompts lose tokens: a long prompt used to be cut without a word,
    and a completion that had not seen the prompt's head (imports, the signature) looked like a bad model."""
    if cap in _WARNED_TRIMMED:
        return
    _WARNED_TRIMMED.add(cap)
    print(
        f"codefoundry.models: warning: a prompt of {longest} tokens cut to {budget}: the model's max_seq_len "
        f"is {cap} tokens, new ones included (a prompt loses its head; a FIM prompt the far ends of its "
        "prefix and suffix)",
        file=sys.stderr,
    )


def _warn_lowered(asked: int, got: int, cap: int) -> None:
    """Say once per (asked, cap) that fewer new tokens than asked will be generated: an evaluation run with
    `max_tokens` past the model's context used to be cut short without a word."""
    if (asked, cap) in _WARNED:
        return
    _WARNED.add((asked, cap))
    print(
        f"codefoundry.models: warning: max_new_tokens={asked} lowered to {got}: the model's max_seq_len is "
        f"{cap} tokens, prompt included",
        file=sys.stderr,
    )


def complete(model: Transformer, tokenizer, prompts: list[str], *, suffixes: list[str | None] | None = None,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0, seed: int | None = None, stop: Sequence[str] = (),
             on_text: OnText | None = None, batch_size: int = 16, repetition_penalty: float = 1.0,
             stop_ids: Sequence[int] = (), warn_trimmed: bool = True) -> list[str]:  # fmt: skip
    """Continue each prompt; with a (non-None) suffix, write the middle between prompt and suffix (FIM,
    PSM). Generation ends at <|endoftext|> or <|file_sep|> (and <|fim_pad|> for FIM) where the tokenizer
    has them, at one of `stop_ids` (an imported tokenizer's end of sequence), at a stop string, or after
    max_new_tokens; the FIM sentinels are never written (`generate.PLAIN_BANNED`). `on_text(row,
    piece)` streams each row's text as it is decided. `repetition_penalty` as in `generate`.
    A plain prompt's special-token text is read as those tokens, as Hugging Face tokenizers and vLLM read
    it (a chat template written out as text works). With a suffix, prompt and suffix are the text around a
    middle: a "<|fim_middle|>" or "<|endoftext|>" in them is encoded as those characters, as in training
    documents, so that it cannot break the FIM layout this function builds. Prompts too long for the
    context are trimmed as `complete_ids` says (`warn_trimmed`)."""
    suffixes = suffixes if suffixes is not None else [None] * len(prompts)
    if len(suffixes) != len(prompts):
        raise ValueError(f"complete: {len(prompts)} prompts but {len(suffixes)} suffixes")
    for i, (prompt, suffix) in enumerate(zip(prompts, suffixes, strict=True)):
        check_utf8(prompt, f"complete: prompt {i}")
        check_utf8(suffix, f"complete: suffix {i}")
    fim = any(s is not None for s in suffixes)
    ids, prefix_lengths = [], []
    for prompt, suffix in zip(prompts, suffixes, strict=True):
        if suffix is None:
            ids.append(tokenizer.encode(prompt, add_special_tokens=False).ids)
            prefix_lengths.append(None)
        else:
            fim_ids, n_prefix = _fim_ids(tokenizer, prompt, suffix)
            ids.append(fim_ids)
            prefix_lengths.append(n_prefix)
    # Those of our end tokens the tokenizer has: an imported Llama tokenizer has none, and required they
    # made every plain completion fail.
    stop_ids = [*ids_of(tokenizer, FIM_STOPS if fim else PLAIN_STOPS), *stop_ids]
    return complete_ids(
        model, tokenizer, ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids, stop=stop,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, batch_size=batch_size,
        on_text=on_text, fim_prefix_lengths=prefix_lengths, repetition_penalty=repetition_penalty,
        banned_ids=ids_of(tokenizer, FIM_BANNED if fim else PLAIN_BANNED), warn_trimmed=warn_trimmed,
    )  # fmt: skip


def check_utf8(text: str | None, what: str) -> None:
    """A ValueError naming `what` when UTF-8 cannot encode `text`: a lone surrogate, which is how Python
    hands over an undecodable byte of a command-line argument or of a file read with
    `errors="surrogateescape"`. The tokenizer refused it with a bare TypeError ("TextInputSequence must
    be str")."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what}: not UTF-8 text (character {e.start} is {text[e.start]!r}, an undecodable byte)"
        ) from None


class _TextStream:
    """One row's text as it is generated: bytes are decoded incrementally (a character split across
    tokens waits for its last byte) and text that may be the start of a stop string is held back, so the
    pieces add up to exactly the text `complete` returns."""

    def __init__(self, table: list[bytes], stops: Sequence[str], row: int, emit: OnText) -> None:
        self.table, self.stops, self.row, self.emit = table, tuple(stops), row, emit
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.done = False

    def push(self, token: int) -> None:
        if self.done:
            return
        self.pending += self.decoder.decode(piece(self.table, token))
        cut = truncate_at_stop(self.pending, self.stops)
        if len(cut) < len(self.pending):
            self._emit(cut)
            self.done = True
            return
        text = self.pending
        hold = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self._emit(text[: len(text) - hold])
        self.pending = text[len(text) - hold :]

    def close(self) -> None:
        if not self.done:
            self.pending += self.decoder.decode(b"", final=True)
            self._emit(truncate_at_stop(self.pending, self.stops))
            self.done = True

    def _emit(self, text: str) -> None:
        if text:
            self.emit(self.row, text)
        self.pending = ""


def generate_command(ckpt: str, prompt: str, suffix: str | None, max_tokens: int, temperature: float,
                     top_p: float, seed: int | None, stream: bool,
                     repetition_penalty: float = 1.0, min_p: float = 0.0) -> str:  # fmt: skip
    """What `codefoundry generate CKPT --prompt TEXT [--suffix TEXT]` does: the completion (the middle
    when a suffix is given). With `stream`, the text is also written to stdout as it is generated."""
    from codefoundry.models import checkpoint
    from codefoundry.models import tokenizer as tokenizer_module
    from codefoundry.models.hf import special_token_ids

    # Checked before the (possibly slow) load, named as the command's options.
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {max_tokens}")
    if not 0 <= temperature < math.inf:  # also refuses NaN
        raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if not 0 <= min_p <= 1:
        raise ValueError(f"--min-p must be in [0, 1], got {min_p}")
    if not 0 < repetition_penalty < math.inf:
        raise ValueError(f"--repetition-penalty must be a finite number > 0, got {repetition_penalty}")
    check_utf8(prompt, "--prompt")
    check_utf8(suffix, "--suffix")
    model = checkpoint.load(ckpt)
    tok = tokenizer_module.load(ckpt)
    checkpoint.check_tokenizer_fits(ckpt, tok.get_vocab().values(), model.cfg.vocab_size)
    # The end of sequence tokenizer_config.json names (an imported Llama's "</s>") ends the text too.
    eos = special_token_ids(ckpt)["eos_token_id"] if (Path(ckpt) / "tokenizer.json").is_file() else None

    def write(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    return complete(
        model, tok, [prompt], suffixes=[suffix], max_new_tokens=max_tokens, temperature=temperature,
        top_p=top_p, min_p=min_p, seed=seed, on_text=write if stream else None,
        repetition_penalty=repetition_penalty, stop_ids=[] if eos is None else [eos],
    )[0]  # fmt: skip
