"""Generation from a codefoundry `Transformer`: batched KV-cached decoding, greedy or top-k/top-p/min-p
sampling (`codefoundry.models.sampling`: each row from its own seeded stream), stop tokens and stop
strings, streaming, fill-in-the-middle prompts, and self-speculative greedy decoding with the model's own
MTP modules.

`generate` works on token ids. A batch is left-padded to its longest prompt: padding keys are masked
and each row's rotary positions start at 0 where its prompt starts (a batch without padding needs
neither). One `KVCache` of prompt + max_new positions is allocated up front; the prompt runs in one
forward (`Transformer`'s blocks, last-position logits only), then each new token in one `Step`
(`codefoundry.models.step`).

Stop strings are matched on the bytes of each row's last tokens, and only when the new token holds the
last byte of some stop string. The ids a row returns include the token that completed a stop string;
`codefoundry.models.completion` cuts the text before it, as `truncate_at_stop` does.

Speculative decoding (greedy only): MTP module k drafts token i+k+1 from the main model's hidden state
at i and the tokens in between (DeepSeek-V3's chain), the main model checks all drafts in one forward,
the longest agreeing prefix plus the main model's own next token are kept, and the caches are rolled
back past the rest. The output is the greedy output; rows run one at a time.

Limits: prompt + max_new_tokens must fit `max_seq_len` (`complete_ids` trims prompts to fit: the head
of a plain prompt, the far ends of a FIM prefix and suffix). No beam search.

`repetition_penalty` is CTRL's (Keskar et al. 2019): the logit of a token the row has already generated is
divided by it where positive and multiplied by it where negative, before temperature and the other
restrictions, greedy decoding included. Unlike Hugging Face's and vLLM's knob of the same name, the
prompt's tokens do not count: a function's header and the code above it hold the indentation, names and
punctuation its body needs, and counting them punishes those. On the 10-minute 10m model, 400 held-out
bodies sampled at temperature 0.5 (`benchmarks/syntax_failures.py`): 190 parse without a penalty, 270 with
1.1 over the generated tokens, 195 with 1.1 over prompt and generated tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codefoundry.models.sampling import Penalty, Sampler, scaled
from codefoundry.models.step import Step
from codefoundry.models.tokenizer import EOT, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX
from codefoundry.models.transformer import KVCache, Transformer
from codefoundry.models.vocab_bytes import decode, decode_after, token_bytes
from codefoundry.models.vocab_bytes import piece as token_piece

__all__ = [
    "SpeculativeResult",
    "decode",
    "decode_after",
    "generate",
    "heal_prompts",
    "ids_of",
    "padding_ids",
    "speculative_decode",
    "token_bytes",
]

# on_token(row, token_id) sees every kept token in order; returning True ends that row (the token stays).
OnToken = Callable[[int, int], "bool | None"]
OnDone = Callable[[int, list[int]], None]
OnText = Callable[[int, str], None]  # on_text(row, piece): the row's text, piece by piece

FIM_STOPS = (EOT, FIM_PAD, FILE_SEP)
PLAIN_STOPS = (EOT, FILE_SEP)
# Tokens no well-formed continuation holds, given to `generate(banned_ids=)` by the text-level callers: the
# FIM sentinels, after a plain prompt or inside a middle (<|fim_pad|> is a FIM stop). A model trained on
# FIM examples otherwise writes one now and then where a FIM example split its training text (measured on
# the 10-minute 10m model at temperature 0.8: in 4-7 of 400 sampled bodies, and 22 of 23 did not parse).
FIM_BANNED = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)
PLAIN_BANNED = (*FIM_BANNED, FIM_PAD)
# When the rows still decoding fall to this fraction of the batch's rows, the finished rows are dropped from
# the batch (KV cache, mask, positions), so a batch whose rows end at different lengths does not run every
# step at its full size until the longest row ends. 1.0: as soon as any row ends (each costs one row's copy
# of the cache at most); 0: never (benchmarks/generate_ragged.py measures both).
COMPACT_BELOW = 1.0


# -- per-row bookkeeping ------------------------------------------------------------------------------------
class _Rows:
    """What each row has produced, and whether it is finished (stop id, stop string, callback, length)."""

    def __init__(self, n: int, max_new: int, stop_ids, stop_strings, table, on_token, on_done=None,
                 logprobs: list[list[float]] | None = None) -> None:  # fmt: skip
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.logprobs = logprobs  # when given: one list per row, the log-prob of each token kept in `out`
        self.max_new, self.stop_ids, self.on_token, self.on_done = (
            max_new,
            frozenset(stop_ids),
            on_token,
            on_done,
        )
        self.stops = [s.encode() for s in stop_strings]
        self.table = table
        self.tails = [b"" for _ in range(n)]  # the last bytes of each row, enough to hold any stop string
        self.last_bytes = frozenset(s[-1] for s in self.stops)
        self.keep = max((len(s) for s in self.stops), default=0)

    def push(self, row: int, token: int, logprob: float = 0.0) -> bool:
        """Record `token` for `row`; True when the row is finished (then `on_done(row, ids)` is called)."""
        done = self._push(row, token, logprob)
        if done and self.on_done is not None:
            self.on_done(row, self.out[row])
        return done

    def _push(self, row: int, token: int, logprob: float) -> bool:
        if token in self.stop_ids:
            return True
        out = self.out[row]
        out.append(token)
        if self.logprobs is not None:
            self.logprobs[row].append(logprob)
        if self.on_token is not None and self.on_token(row, token):
            return True
        if self.stops:
            piece = token_piece(self.table, token)
            tail = self.tails[row] + piece
            self.tails[row] = tail[-self.keep :]
            # A stop string can only have just appeared if this token holds its last byte.
            if not self.last_bytes.isdisjoint(piece) and any(s in tail for s in self.stops):
                return True
        return len(out) >= self.max_new


# -- generation on ids ------------------------------------------------------------------------------------
def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int | Sequence[int] | None = None,
             stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (), tokenizer=None,
             on_token: OnToken | None = None,
             on_done: OnDone | None = None, speculative: bool = False,
             first_tokens: Sequence[Sequence[int] | None] | None = None,
             logprobs: list[list[float]] | None = None, banned_ids: Sequence[int] = (),
             repetition_penalty: float = 1.0) -> list[list[int]]:  # fmt: skip
    """The new tokens of each prompt. A row ends at a stop id (not returned), at a stop string (matched on
    the decoded bytes; the token completing it is returned), when `on_token(row, id)` returns True, or
    after max_new_tokens; `on_done(row, ids)` is then called at once, while other rows still decode (RL
    scores finished rows meanwhile). temperature 0 is greedy; else top-k (0 = off), top-p and min-p (0 =
    off) sampling, each row from its own stream of `seed` (one int for the call, one per prompt, or None
    for fresh entropy; see `codefoundry.models.sampling`). `speculative` drafts with the MTP modules
    (greedy, same output).
    `first_tokens[row]` (None: any) are the ids the row's first new token is drawn from (`heal_prompts`);
    `banned_ids` are never drawn, greedy or sampled (`PLAIN_BANNED`, `FIM_BANNED`).
    `repetition_penalty` (1 = off) penalises the tokens each row has generated so far (see the module's
    docstring).
    `logprobs`, when given, is a list that receives one list per prompt: the log-prob of each returned
    token under softmax(logits / temperature) (temperature 1 when greedy), before the repetition penalty,
    top-k/top-p/min-p, `first_tokens` and `banned_ids` change it, from the model's logits at that step (an RL
    behaviour policy)."""
    _check(model, prompts, max_new_tokens, temperature, top_k, top_p, min_p, stop_strings, tokenizer)
    if not 0 < repetition_penalty < math.inf:  # also refuses NaN
        raise ValueError(
            f"generate: repetition_penalty must be a finite number > 0, got {repetition_penalty}"
        )
    ban = _ban_mask(banned_ids, model)
    if first_tokens is not None and (speculative or len(first_tokens) != len(prompts)):
        raise ValueError("generate: first_tokens needs one entry per prompt and no speculative decoding")
    if logprobs is not None:
        if speculative:
            raise ValueError("generate: logprobs are not recorded by speculative decoding")
        logprobs[:] = [[] for _ in prompts]
    table = token_bytes(tokenizer) if stop_strings else None
    rows = _Rows(len(prompts), max_new_tokens, stop_ids, stop_strings, table, on_token, on_done, logprobs)
    with torch.inference_mode():
        if speculative:
            if temperature > 0 or repetition_penalty != 1:
                raise ValueError(
                    "generate: speculative decoding is plain greedy only; pass temperature=0 and no "
                    "repetition_penalty"
                )
            for i, prompt in enumerate(prompts):
                _speculative(model, prompt, rows, i, ban)
        else:
            sampler = Sampler(temperature, top_k, top_p, min_p, seed, len(prompts))
            penalty = None
            if repetition_penalty != 1:
                penalty = Penalty(
                    repetition_penalty, len(prompts), model.cfg.vocab_size, model.embed.weight.device
                )
            _decode(model, prompts, rows, sampler, _first_mask(first_tokens, model), ban, penalty)
    return rows.out


def _check(model, prompts, max_new, temperature, top_k, top_p, min_p, stop_strings, tokenizer) -> None:
    cfg = model.cfg
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("generate: prompts must be a non-empty list of token-id lists")
    if max_new < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new}")
    if not 0 <= temperature < math.inf or top_k < 0 or not 0 < top_p <= 1 or not 0 <= min_p <= 1:  # NaN too
        raise ValueError(
            "generate: need temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1; got "
            f"{temperature}, {top_k}, {top_p}, {min_p}"
        )
    if stop_strings and (tokenizer is None or not all(stop_strings)):
        raise ValueError("generate: stop_strings must be non-empty and need the tokenizer (pass tokenizer=)")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"generate: prompt {i} is empty")
        if len(p) + max_new > cfg.max_seq_len:
            raise ValueError(
                f"generate: prompt {i} has {len(p)} tokens; with max_new_tokens={max_new} that exceeds "
                f"the model's max_seq_len={cfg.max_seq_len}"
            )
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"generate: prompt {i} has a token id outside [0, {cfg.vocab_size})")


def padding_ids(table: list[bytes], model: Transformer) -> list[int]:
    """The model's ids past the tokenizer's vocabulary (`token_bytes`): an imported checkpoint's embedding
    is often padded (Qwen2.5: 151,936 rows for 151,665 tokens). No text decodes them, so the text-level
    callers ban them."""
    return list(range(len(table), model.cfg.vocab_size))


def ids_of(tokenizer, tokens: Sequence[str]) -> list[int]:
    """The ids of those of `tokens` the tokenizer has (a tokenizer without FIM tokens bans nothing)."""
    return [i for t in tokens if (i := tokenizer.token_to_id(t)) is not None]


def _ban_mask(banned_ids: Sequence[int], model: Transformer) -> torch.Tensor | None:
    """(V,) True at the banned ids, or None when there are none."""
    if not banned_ids:
        return None
    vocab = model.cfg.vocab_size
    if any(not isinstance(t, int) or not 0 <= t < vocab for t in banned_ids):
        raise ValueError(f"generate: banned_ids must be token ids in [0, {vocab}), got {list(banned_ids)}")
    mask = torch.zeros(vocab, dtype=torch.bool, device=model.embed.weight.device)
    mask[list(banned_ids)] = True
    return mask


def _banned(logits: torch.Tensor, ban: torch.Tensor | None) -> torch.Tensor:
    return logits if ban is None else logits.masked_fill(ban, float("-inf"))


def _first_mask(first_tokens, model: Transformer) -> torch.Tensor | None:
    """(B, V) True where a row's first new token may be, from `first_tokens` (None when unconstrained)."""
    if first_tokens is None or all(t is None for t in first_tokens):
        return None
    weight = model.embed.weight
    mask = torch.ones(len(first_tokens), model.cfg.vocab_size, dtype=torch.bool, device=weight.device)
    for row, allowed in enumerate(first_tokens):
        if allowed is not None:
            if not allowed:
                raise ValueError(f"generate: first_tokens[{row}] allows no token")
            mask[row] = False
            mask[row, torch.tensor(list(allowed), device=weight.device)] = True
    return mask


def heal_prompts(prompts: list[list[int]], table: list[bytes]
                 ) -> tuple[list[list[int]], list[list[int] | None], list[int]]:  # fmt: skip
    """Token healing for prompts that end in whitespace. A prompt ending with a bare newline token ends at
    a boundary training text rarely has: BPE merges a newline with the next line's indentation, so after
    a lone newline the model has mostly seen unindented lines, and a function body prompted that way
    comes out empty. Each such prompt loses its last token (if that token is whitespace only and the
    prompt keeps at least one), and its first new token must start with that token's bytes (for `generate(..., first_tokens=)`).
    Returns the prompts, the allowed first tokens (None: the prompt is unchanged) and how many bytes to
    drop from the front of each output (`decode_after`), which the prompt already had."""
    by_bytes: dict[bytes, list[int]] = {}
    out, firsts, skips = [], [], []
    for prompt in prompts:
        last = token_piece(table, prompt[-1]) if prompt else b""
        if len(prompt) < 2 or not last or last.strip():
            out.append(prompt)
            firsts.append(None)
            skips.append(0)
            continue
        if last not in by_bytes:
            by_bytes[last] = [i for i, piece in enumerate(table) if piece.startswith(last)]
        out.append(prompt[:-1])
        firsts.append(by_bytes[last])
        skips.append(len(last))
    return out, firsts, skips


def _decode(model: Transformer, prompts: list[list[int]], rows: _Rows, sample: Sampler,
            first: torch.Tensor | None = None, ban: torch.Tensor | None = None,
            penalty: Penalty | None = None) -> None:  # fmt: skip
    B, lengths = len(prompts), [len(p) for p in prompts]
    L = max(lengths)
    S = L + rows.max_new
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    cache = KVCache.empty(model.cfg, B, S, layers=model.cfg.n_layers, device=device, dtype=dtype)
    pads = [L - n for n in lengths]
    ids = torch.tensor([[0] * pad + p for pad, p in zip(pads, prompts, strict=True)], device=device)  # (B, L)
    positions = keys = None
    if any(pads):
        pad = torch.tensor(pads, device=device).unsqueeze(1)  # (B, 1)
        keys = torch.arange(S, device=device) >= pad  # (B, S): False on padding
        positions = (torch.arange(L, device=device) - pad).clamp_min(0)  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        # Padding queries attend to themselves only, so no softmax row is empty (an empty one is NaN).
        mask = (causal & keys[:, None, :L]) | torch.eye(L, dtype=torch.bool, device=device)
        logits = _prefill(model, ids, cache, positions, mask.unsqueeze(1))
        positions = positions[:, -1:].clone()  # (B, 1): advanced in place every step
        # Built once; each step takes the first cache.length + 1 keys. Additive (0 / -inf) rather than
        # boolean: SDPA's CPU kernel gives the same output bit for bit, ~30% faster (136 vs 194 us a
        # layer at 32 rows of the tiny model).
        keys = torch.zeros(B, 1, 1, S, dtype=dtype, device=device).masked_fill_(
            ~keys.view(B, 1, 1, S), -math.inf
        )
    else:
        logits = _prefill(model, ids, cache, None, None)
    step = Step(model, cache, keys, static=True)
    live = list(range(B))  # the prompt of each row of the batch's tensors (each, until rows are dropped)
    running = list(range(B))  # the rows of the batch still decoding
    temperature = sample.temperature or 1.0
    for _ in range(rows.max_new):
        raw = logits
        if penalty is not None:
            logits = penalty(logits)
        logits = _banned(logits, ban)
        if first is not None:
            logits = logits.masked_fill(~first, float("-inf"))
            first = None
        tokens = sample(logits)  # (rows,)
        if penalty is not None:
            penalty.record(tokens)
        values = tokens.tolist()
        if rows.logprobs is None:
            running = [b for b in running if not rows.push(live[b], values[b])]
        else:
            chosen = scaled(raw, temperature).log_softmax(-1).gather(1, tokens[:, None]).squeeze(1).tolist()
            running = [b for b in running if not rows.push(live[b], values[b], chosen[b])]
        if not running:
            break
        if positions is not None:
            positions += 1
        if len(running) < len(live) and len(running) <= COMPACT_BELOW * len(live):
            # Drop the finished rows: each later step then costs what the rows still decoding need.
            order = _fill_holes(running)
            keep = torch.tensor(order, device=device)
            cache.keep_rows(order)
            step.keep_rows(keep)
            if penalty is not None:
                penalty.keep_rows(keep)
            tokens = tokens.index_select(0, keep)
            if positions is not None:
                positions = positions.index_select(0, keep)
            live = [live[b] for b in order]
            running = list(range(len(live)))
            sample.live = np.array(live)
        logits = step(tokens.view(len(live), 1), positions)[0][:, 0]  # (rows, V)


def _fill_holes(running: list[int]) -> list[int]:
    """The batch rows to keep, `running` (ascending), in their new order: a running row below len(running)
    stays where it is, and the running rows past it fill the finished rows' places, so that each finished
    row costs at most one row's copy of the KV cache."""
    n = len(running)
    movers = [b for b in running if b >= n]
    kept = set(running)
    return [i if i in kept else movers.pop() for i in range(n)]


def _prefill(model: Transformer, ids, cache: KVCache, positions, mask) -> torch.Tensor:
    """`Transformer.forward` over the prompts (B, L), keeping the logits of the last position only:
    (B, V) instead of (B, L, V), which for a small model with a 32k vocabulary is half the work."""
    cos, sin = model.rope(positions, cache.length, ids.shape[1])
    x = model.embed(ids)  # (B, L, dim)
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, cache, i, mask)
    cache.length += ids.shape[1]
    return model.lm_head(model.norm(x[:, -1]))  # (B, V)


# -- self-speculative decoding ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeculativeResult:
    tokens: list[int]
    drafted: int  # draft tokens proposed by the MTP modules
    accepted: int  # of those, the ones the main model agreed with
    forwards: int  # main-model forwards, the prompt's included

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def speculative_decode(model: Transformer, prompt: list[int], *, max_new_tokens: int,
                       stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (), tokenizer=None,
                       on_token: OnToken | None = None, banned_ids: Sequence[int] = ()) -> SpeculativeResult:  # fmt: skip
    """Greedy decoding of one prompt with MTP drafts, and how many drafts were accepted."""
    _check(model, [prompt], max_new_tokens, 0.0, 0, 1.0, 0.0, stop_strings, tokenizer)
    table = token_bytes(tokenizer) if stop_strings else None
    rows = _Rows(1, max_new_tokens, stop_ids, stop_strings, table, on_token)
    with torch.inference_mode():
        drafted, accepted, forwards = _speculative(model, prompt, rows, 0, _ban_mask(banned_ids, model))
    return SpeculativeResult(rows.out[0], drafted, accepted, forwards)


def _speculative(model: Transformer, prompt: list[int], rows: _Rows, row: int,
                 ban: torch.Tensor | None = None) -> tuple[int, int, int]:  # fmt: skip
    cfg = model.cfg
    D = cfg.mtp_depth
    if D == 0:
        raise ValueError("generate: speculative decoding needs a model with MTP modules (mtp_depth > 0)")
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    S = len(prompt) + rows.max_new + D + 1
    cache = KVCache.empty(cfg, 1, S, layers=cfg.n_layers, device=device, dtype=dtype)
    drafts_cache = KVCache.empty(cfg, 1, S, layers=D, device=device, dtype=dtype)
    # inputs[k, i]: what MTP module k+1 reads at position i (the main hidden state for k = 0, else
    # module k's output); valid[k]: module k+1's cache and output are right for positions < valid[k].
    inputs = torch.empty(D, S, cfg.dim, device=device, dtype=dtype)
    valid = [0] * D
    out = model(torch.tensor([prompt], device=device), cache=cache)
    inputs[0, : len(prompt)] = out.hidden[0]
    tokens = list(prompt)
    step = Step(model, cache, None)
    # the main model's next token, not yet in its cache
    pending = int(_banned(out.logits[0, -1], ban).argmax())
    drafted = accepted = 0
    forwards = 1
    while True:
        tokens.append(pending)
        if rows.push(row, pending):
            break
        n = cache.length  # tokens[n] is `pending`
        d = min(D, rows.max_new - len(rows.out[row]) - 1)  # drafts beyond the length limit are wasted
        drafts = _draft(model, step.head, drafts_cache, inputs, valid, tokens, n, d, ban)
        # The main model on [pending, d_1..d_d]: logits (1, d+1, V), hidden (1, d+1, dim).
        logits, hidden = step(torch.tensor([[pending, *drafts]], device=device), None)
        forwards += 1
        verdict = _banned(logits[0], ban).argmax(dim=-1).tolist()  # verdict[j]: the main model's token n+j+1
        a = 0
        while a < d and drafts[a] == verdict[a]:
            a += 1
        drafted, accepted = drafted + d, accepted + a
        cache.length = n + a + 1  # forget the keys of rejected drafts
        inputs[0, n : n + a + 1] = hidden[0, : a + 1]
        # Module k at position i read token i+k; tokens up to n+a are now confirmed.
        valid = [max(0, min(v, n + a - k)) for k, v in enumerate(valid, start=1)]
        finished = False
        for t in drafts[:a]:
            tokens.append(t)
            if rows.push(row, t):
                finished = True
                break
        if finished:
            break
        pending = verdict[a]
    return drafted, accepted, forwards


def _draft(
    model, head, cache: KVCache, inputs, valid: list[int], tokens: list[int], n: int, d: int, ban=None
) -> list[int]:
    """d draft tokens for positions n+1..n+d; each MTP module first catches up on the positions where
    its cache is stale, reading confirmed tokens where they exist and earlier drafts after them."""
    drafts: list[int] = []
    device = inputs.device
    for k in range(1, d + 1):
        module, start = model.mtp[k - 1], valid[k - 1]
        # Module k at position i reads token i+k: tokens[i+k] while i+k <= n, else drafts[i+k-n-1].
        nxt = tokens[start + k : n + 1] + drafts[max(0, start + k - n - 1) : k - 1]
        nxt = torch.tensor(nxt, device=device)  # (n - start,)
        cache.length = start  # the block attends over (and writes after) its own valid positions
        h = module(
            inputs[k - 1, start:n].unsqueeze(0), model.embed(nxt).unsqueeze(0),
            model.rope_cos[start:n], model.rope_sin[start:n], cache, k - 1, None,
        )[0]  # fmt: skip  # (n - start, dim)
        valid[k - 1] = n
        if k < len(valid):
            inputs[k, start:n] = h
        logits = head(module.norm(h[-1:]))[0]  # head: the output head, x -> x @ W.T
        drafts.append(int(_banned(logits, ban).argmax()))
    return drafts
