"""Next tokens from last-position logits: greedy, or sampled after temperature, top-k, top-p and min-p.

Each row of a batch draws from its own random stream, keyed by the call's seed and the row's index (or by
the row's own seed, when the caller gives one per row). A stream is counter-based (splitmix64 of the key
plus the step), so a row's uniforms depend on its seed alone, not on the batch it shares, the batch size,
when the other rows finish or the device: `generate([p, q], seed=s)[0]` equals `generate([p], seed=s)[0]`,
and `complete_ids` gives each prompt a seed of its own, so its texts do not change with `batch_size`
either. The tokens drawn also depend on the logits, and those are the same only up to rounding: a batch's
padding and shape move them in the last bits (1e-6 in a log-prob on the tiny model), which changes a draw
only where the uniform falls that close to a boundary; another device or dtype computes other logits.
(vLLM seeds per request the same way; Hugging Face's `generate` draws the whole batch from torch's global
generator, so its samples change with the batch.) The batch's uniforms cost ~7 us of numpy a step at 1,
16 or 64 rows (torch.rand's one draw: ~2 us), against ~14 ms for a batch-16 step of the 10m model and
~180 us for the draw itself at 16 x 8192, which inverts the cumulative distribution.

min-p (Nguyen et al. 2024, "Turning Up the Heat"; vLLM's and Hugging Face's `min_p`): after temperature, a
token whose probability is below `min_p` times the row's most likely token's is dropped. It cuts the long
tail that high temperatures draw misspelt names and stray quotes from, while a flat distribution keeps its
choices. The restrictions apply in the order temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Penalty", "Sampler", "argmax", "child_seed", "scaled"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: 2^64 / the golden ratio, odd


_S11, _S27, _S30, _S31 = (np.uint64(n) for n in (11, 27, 30, 31))
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (array arithmetic wraps silently): a bijection that
    scatters nearby inputs."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _mix_int(value: int) -> int:
    return int(_mix(np.array([value & _MASK], dtype=np.uint64))[0])


def child_seed(seed: int, index: int) -> int:
    """The seed of stream `index` under `seed` (any ints; Python's, so past 64 bits too): what row `index`
    of `generate(..., seed=seed)` draws from, given as that row's own seed."""
    return _mix_int(_mix_int(seed) + (index & _MASK) * _GOLDEN)


def _keys(seed: int | Sequence[int] | None, rows: int) -> np.ndarray:
    """The stream key of each row: `child_seed(seed, row)` for one seed, each row's own seed (mod 2^64) for
    a sequence, so `seed=s` and `seed=[child_seed(s, i) for i in ...]` draw the same; fresh entropy for
    None (an unseeded call must not repeat itself)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, Sequence):
        seeds = list(seed)
        if len(seeds) != rows or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"generate: seed must be an int or one int per prompt ({rows}), got {seed!r}")
        values = [s & _MASK for s in seeds]
    elif isinstance(seed, int) and not isinstance(seed, bool):
        values = [child_seed(seed, i) for i in range(rows)]
    else:
        raise ValueError(f"generate: seed must be an int, one int per prompt, or None; got {seed!r}")
    return np.array(values, dtype=np.uint64)


class Sampler:
    """Tokens (B,) from logits (B, V): argmax at temperature 0, else a draw from the restricted softmax,
    one uniform per row from the row's stream. After the decoding loop drops finished rows it sets `live`
    to the original row of each row left, so each row keeps its own stream."""

    def __init__(self, temperature: float, top_k: int, top_p: float, min_p: float,
                 seed: int | Sequence[int] | None, rows: int) -> None:  # fmt: skip
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        # Checked greedy or not: a seed list of the wrong length is a caller's mistake either way.
        self.keys = _keys(seed, rows) if temperature > 0 or seed is not None else None
        self.live: np.ndarray | None = None
        self.steps = 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return argmax(logits)
        logits = scaled(logits, self.temperature)
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            logits = _nucleus(logits, self.top_p)
        if self.min_p > 0:
            # `scaled` puts each row's largest logit at 0, so p / p_max is exp(logit).
            logits = logits.masked_fill(logits < math.log(self.min_p), float("-inf"))
        return _draw(logits.softmax(dim=-1), self._uniforms())

    def _uniforms(self) -> np.ndarray:
        """One uniform in [0, 1) per live row: the 53 high bits of its stream's next value."""
        keys = self.keys if self.live is None else self.keys[self.live]
        self.steps += 1
        z = _mix(keys + np.uint64((self.steps * _GOLDEN) & _MASK))
        return (z >> _S11).astype(np.float64) * 2.0**-53


class Penalty:
    """The repetition penalty's state (`generate`'s `repetition_penalty`): which tokens each row of the batch
    has generated."""

    def __init__(self, factor: float, rows: int, vocab_size: int, device) -> None:
        self.factor = factor
        self.drawn = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # logits: (rows, V), one row per row of `drawn`
        penalised = torch.where(logits > 0, logits / self.factor, logits * self.factor)
        return torch.where(self.drawn, penalised, logits)

    def record(self, tokens: torch.Tensor) -> None:
        self.drawn.scatter_(1, tokens.view(-1, 1), True)

    def keep_rows(self, keep: torch.Tensor) -> None:
        self.drawn = self.drawn.index_select(0, keep)


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 logits (B, V) / temperature, shifted so each row's largest is 0 (the softmax is the same): at a
    tiny temperature (1e-38) the unshifted ones overflowed to inf, the softmax was NaN and the draw an id
    past the vocabulary. A temperature below fp32's smallest normal number, which would round to 0, divides
    as that number (the other tokens' probabilities underflow to 0 either way)."""
    logits = logits.float()
    return (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, torch.finfo(torch.float32).tiny)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, V) -> (B,) int64, the first maximum of each row (NaN counts as the maximum), as
    `argmax(dim=-1)`. On the CPU for fp32, through numpy's vectorised argmax: 21 vs 173 us for 16 x 8192
    (torch 2.13's CPU argmax reduces ~1.4 ns an element), ~1.5% of a batch-16 step of the 10m model."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.numpy().argmax(-1)).to(torch.int64)
    return logits.argmax(dim=-1)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p filtering of (B, V) logits: in order of probability, a token is dropped when the tokens before
    it already cover `top_p` (the most likely one always stays). The cut is found on the sorted values
    alone and applied as a probability threshold (a token tied with the last one kept stays too): on CPU
    numpy sorts values 5x faster than `torch.sort` sorts values with indices."""
    probs = logits.softmax(dim=-1)
    if probs.device.type == "cpu":
        ordered = torch.from_numpy(np.sort(probs.numpy(), axis=-1)).flip(-1)
    else:
        ordered = probs.sort(dim=-1, descending=True).values
    kept = (ordered.cumsum(dim=-1) - ordered <= top_p).sum(dim=-1, keepdim=True).clamp_min(1)  # (B, 1)
    threshold = ordered.gather(-1, kept - 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def _draw(probs: torch.Tensor, uniforms: np.ndarray) -> torch.Tensor:
    """One token per row of probs (B, V) by inverting the cumulative distribution at the row's uniform
    (instead of `torch.multinomial`'s per-row set-up: on CPU 5-10x faster at sampling batch sizes). A token
    of probability 0 is never drawn. On the CPU its cumulative value equals its predecessor's (the scan is
    sequential, accumulated in float64, each entry rounded once) and `u` stays below the row's total. A
    parallel scan (CUDA's cumsum) sums neighbouring entries in different orders, so a zero's entry can
    come out an ulp above its predecessor's (pytorch#21780, flashinfer#225): a row that drew such a token
    is drawn again, at the same uniform, from a sequential float64 scan on the CPU."""
    cdf = probs.cumsum(dim=-1)  # (B, V)
    tokens = _invert(cdf, torch.from_numpy(uniforms).to(device=probs.device, dtype=probs.dtype))
    zero = probs.gather(1, tokens.view(-1, 1)).squeeze(1) == 0  # (B,); rare, and never on the CPU
    if zero.any():
        rows = zero.nonzero().squeeze(1)
        redo = _invert(probs[rows].cpu().double().cumsum(dim=-1), torch.from_numpy(uniforms)[rows.cpu()])
        tokens[rows] = redo.to(tokens.device)
    return tokens


def _invert(cdf: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The first index of each row of cdf (B, V) whose entry exceeds the row's uniform (B,) times its total:
    below the total (a uniform rounded up to 1 when cast to fp32 is held an ulp under it), so never V."""
    total = cdf[:, -1:]
    u = torch.minimum(uniforms.view(-1, 1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)
