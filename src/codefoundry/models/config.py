"""The model config: one small dataclass (plus one for the mixture-of-experts layer) and named sizes.

A size name fixes the shape (width, depth, heads); the vocabulary comes from the tokenizer. The config
is saved as `config.json` beside the weights, so a checkpoint describes itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int = 8
    top_k: int = 2
    expert_dim: int = 256  # hidden width of each routed SwiGLU expert
    shared_expert_dim: int = 0  # 0 = no shared expert; else the width of one always-on expert
    norm_topk_prob: bool = True  # renormalise the k selected router probabilities to sum to 1
    aux_loss_coef: float = 0.01  # weight of the load-balancing loss
    capacity_factor: float = 0.0  # 0 = dropless; else each expert takes at most cf * tokens * k / E
    shared_expert_gate: bool = False  # Qwen2-MoE: the shared expert scaled per token by sigmoid(w . x)

    def __post_init__(self) -> None:
        _check_ranges(self, "moe.", positive=("n_experts", "expert_dim"), non_negative=("shared_expert_dim",))
        if not 0 <= self.capacity_factor < math.inf:  # NaN or inf (JSON reads both) failed in the forward
            raise ValueError(f"moe.capacity_factor must be a number >= 0, got {self.capacity_factor!r}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"moe.top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        if self.shared_expert_gate and not self.shared_expert_dim:
            raise ValueError("moe.shared_expert_gate=true needs a shared expert (shared_expert_dim > 0)")


# The longest context a config may ask for: 2^21 positions (Qwen2.5-1M's 1,010,000 fits). The rotary tables
# hold cos and sin for every position, 2 x 4 bytes x head_dim each: 2 GiB at head_dim 128.
MAX_SEQ_LEN = 1 << 21


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention: n_heads // n_kv_heads query heads share a K/V head
    # Width of one attention head; None = dim // n_heads. Set where a checkpoint's heads are not dim / n_heads
    # wide (Mistral-NeMo: dim 5120, 32 heads of 128): Q/K/V then project to n_heads * head_dim, not dim.
    head_dim: int | None = None
    ffn_dim: int = 0  # SwiGLU hidden width; 0 = 8/3 * dim rounded up to a multiple of 64
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    # None = plain RoPE; else {"rope_type": "linear", "factor"}, Llama 3's {"rope_type": "llama3",
    # "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} or YaRN's
    # {"rope_type": "yarn", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
    # "attention_factor", "truncate"} (the last four optional; see ROPE_SCALING_DEFAULTS). Out of the
    # hash (a dict has none, which made a scaled config unhashable) but in ==, so equal configs hash alike.
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2-style biases on the Q, K, V projections
    mtp_depth: int = 0  # DeepSeek-V3-style sequential multi-token-prediction modules
    mtp_weight: float = 0.3  # lambda: the MTP loss is lambda * mean over depths
    moe: MoEConfig | None = None  # None = dense MLP in every layer
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form provenance only

    def __post_init__(self) -> None:
        positive = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")
        _check_ranges(self, "", positive=positive, non_negative=("ffn_dim", "mtp_depth"))
        if self.max_seq_len > MAX_SEQ_LEN:  # a hand-edited 10^9 failed later, allocating the rotary tables
            raise ValueError(
                f"max_seq_len must be at most {MAX_SEQ_LEN:,} (the rotary tables hold every position), got "
                f"{self.max_seq_len:,}; an import takes a smaller one with --max-seq-len"
            )
        if not self.rope_theta > 0:  # 0, a negative or NaN base made NaN rotary tables, so NaN logits
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", _checked_rope_scaling(self.rope_scaling))
        if self.head_dim is None or isinstance(self.head_dim, _DerivedHeadDim):
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} is not a multiple of n_heads={self.n_heads}")
            # Derived anew each time: `replace(cfg, n_heads=2)` passes the old width back in, and a plain
            # int there would have kept it, silently changing the attention width.
            object.__setattr__(self, "head_dim", _DerivedHeadDim(self.dim // self.n_heads))
        elif isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"head_dim must be a positive integer or null, got {self.head_dim!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.ffn_dim == 0:
            object.__setattr__(self, "ffn_dim", _round_up(8 * self.dim // 3, 64))
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoEConfig(**self.moe))
        elif self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise ValueError(f"moe must be an object of MoE fields or null, got {self.moe!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.head_dim, _DerivedHeadDim):
            d["head_dim"] = None  # saved as derived, so the file reads back as it was written
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config of a JSON object; a ValueError naming the first unknown, missing or mistyped field."""
        _check_types(cls, d, "")
        if isinstance(d.get("moe"), dict):
            _check_types(MoEConfig, d["moe"], "moe.")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the model config ({e})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


class _DerivedHeadDim(int):
    """A `head_dim` computed as dim // n_heads rather than given: recomputed whenever the config is."""


# JSON types of the scalar fields (by their annotation: this module postpones annotations to strings).
_JSON_TYPES = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}


def _check_types(cls: type, d: Any, prefix: str) -> None:
    """`d` is a JSON object holding every required field of `cls`, no unknown one, and scalars of the
    annotated types (a bool is no int here, though Python says it is)."""
    if not isinstance(d, dict):
        raise ValueError(f"the model config must be a JSON object, got a {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {'moe' if prefix else 'model'} config fields: {', '.join(unknown)}")
    for f in fields(cls):
        if f.name not in d:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{prefix}{f.name} is missing")
            continue
        if f.type not in _JSON_TYPES:
            continue
        (kinds, words), value = _JSON_TYPES[f.type], d[f.name]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise ValueError(f"{prefix}{f.name} must be {words}, got {value!r}")


def _check_ranges(cfg: Any, prefix: str, *, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    for name in positive + non_negative:
        value, low = getattr(cfg, name), 1 if name in positive else 0
        if value < low:
            raise ValueError(f"{prefix}{name} must be >= {low}, got {value!r}")


# The keys each RoPE scaling type needs beside rope_type (transformers' names, so configs map one to one).
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
}
# The keys a type may leave out, with transformers' defaults; a checked config holds them all, so that it
# states its tables in full (attention_factor None: derived from factor, see `yarn_attention_factor`).
ROPE_SCALING_DEFAULTS: dict[str, dict[str, Any]] = {
    "yarn": {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": None, "truncate": True},
}


def yarn_attention_factor(
    factor: float, mscale: float | None = None, mscale_all_dim: float | None = None
) -> float:
    """YaRN's scale of cos and sin (so of the attention logits, squared), as transformers derives it when
    the config gives none: 0.1 * ln(factor) + 1, or DeepSeek's ratio of two such terms, each with its own
    multiplier of ln(factor), when both `mscale` and `mscale_all_dim` are set (and non-zero)."""

    def mscale_of(m: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    if mscale and mscale_all_dim:
        return mscale_of(mscale) / mscale_of(mscale_all_dim)
    return mscale_of(1.0)


def _checked_rope_scaling(rs: Any) -> dict[str, Any]:
    """A copy of `rs` with its numbers as floats (the length as an int) and every optional key filled in;
    a one-line ValueError naming the key otherwise. Checked here, not at use: a zero or NaN factor made NaN
    rotary tables, so NaN logits."""
    if not isinstance(rs, dict):
        raise ValueError(f"rope_scaling must be an object or null, got {rs!r}")
    kind = rs.get("rope_type")
    if not isinstance(kind, str) or kind not in ROPE_SCALING_KEYS:
        known = ", ".join(ROPE_SCALING_KEYS)
        raise ValueError(f"rope_scaling.rope_type must be one of {known}, got {kind!r}")
    keys, defaults = ROPE_SCALING_KEYS[kind], ROPE_SCALING_DEFAULTS.get(kind, {})
    unknown = sorted(set(rs) - {"rope_type", *keys, *defaults})
    if unknown:
        raise ValueError(f"rope_scaling ({kind}) has unknown keys: {', '.join(map(str, unknown))}")
    out: dict[str, Any] = {"rope_type": kind}
    for key in keys:
        if key not in rs:
            raise ValueError(f"rope_scaling.{key} is missing (rope_type {kind!r} needs it)")
        out[key] = _rope_value(key, rs[key])
    for key, default in defaults.items():
        out[key] = _rope_value(key, rs[key]) if key in rs else default
    if kind == "llama3" and not out["low_freq_factor"] < out["high_freq_factor"]:
        raise ValueError(
            f"rope_scaling.low_freq_factor={out['low_freq_factor']} must be below "
            f"high_freq_factor={out['high_freq_factor']}"
        )
    if kind == "yarn" and out["attention_factor"] is None:
        out["attention_factor"] = yarn_attention_factor(out["factor"])
    return out


def _rope_value(key: str, value: Any) -> Any:
    """One checked value of `rope_scaling`: the length a positive int, `truncate` a bool, the rest numbers
    above 0 (as floats)."""
    if key == "original_max_position_embeddings":
        if type(value) is not int or value < 1:
            raise ValueError(f"rope_scaling.{key} must be a positive integer, got {value!r}")
        return value
    if key == "truncate":
        if not isinstance(value, bool):
            raise ValueError(f"rope_scaling.{key} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"rope_scaling.{key} must be a number > 0, got {value!r}")
    return float(value)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


# Named shapes: (dim, n_layers, n_heads, n_kv_heads). Parameter counts are at a 32k vocabulary with tied
# embeddings; with the 8k default tokenizer the small sizes are smaller.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 4, 2),  # ~0.3M at a 2k vocab: tests
    "mini": (128, 4, 4, 2),  # ~2M at 8k
    "10m": (256, 10, 8, 4),  # ~9.5M at 8k: the 10-minute CPU run
    "small": (512, 8, 8, 4),  # ~40M at 32k
    "100m": (768, 12, 12, 4),  # ~110M at 32k
    "300m": (1024, 24, 16, 8),  # ~310M at 32k
    "1b": (2048, 22, 32, 8),  # ~1.04B at 32k
}


def config_for_size(
    size: str | tuple[int, int, int, int],
    vocab_size: int,
    *,
    max_seq_len: int = 1024,
    moe_experts: int = 0,
    moe_top_k: int = 2,
    mtp_depth: int = 0,
    **overrides: Any,
) -> ModelConfig:
    """The config of a named size, or of a shape (dim, n_layers, n_heads, n_kv_heads) given as is;
    `moe_experts > 0` turns every MLP into a mixture of that many experts (each a quarter of the dense
    width, with one shared expert of the same width; the top-k weights renormalised unless k is 1)."""
    if isinstance(size, str) and size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    dim, n_layers, n_heads, n_kv_heads = SIZES[size] if isinstance(size, str) else size
    cfg = ModelConfig(
        vocab_size=vocab_size, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        max_seq_len=max_seq_len, mtp_depth=mtp_depth,
    )  # fmt: skip
    if moe_experts:
        # top_k as asked: a k above the number of experts is MoEConfig's error (it was lowered silently)
        width, top_k = _round_up(cfg.ffn_dim // 4, 16), moe_top_k
        moe = MoEConfig(
            n_experts=moe_experts,
            top_k=top_k,
            expert_dim=width,
            shared_expert_dim=width,
            # One expert renormalised is weighted p / p = 1: the router would learn from the balancing
            # loss alone. Top-1 keeps its probability as the gate (Switch Transformer).
            norm_topk_prob=top_k > 1,
        )
        cfg = replace(cfg, moe=moe)
    return replace(cfg, **overrides) if overrides else cfg
