"""Hugging Face import: Llama / Qwen2 / Qwen2-MoE / Mixtral checkpoints into our `Transformer`, with the
same logits (the export is `hf.py`).

Import reads config.json and safetensors weights (model.safetensors, else the shards its
model.safetensors.index.json names: transformers' order) without transformers, or takes a loaded
transformers model. A SentencePiece tokenizer.model without a tokenizer.json is converted through
transformers (which needs sentencepiece), or the import fails saying so. It refuses, naming the config
field, what our `Transformer` cannot compute exactly: RoPE scaling other than linear, Llama 3.1's and
YaRN (dynamic NTK, which follows the running length, and longrope), an active sliding window, biases
beyond Q/K/V, a non-SiLU MLP, and dense layers inside a Qwen2-MoE. All-zero Q/K/V biases and all-zero
shared experts are dropped; all-zero shared-expert gates (sigmoid(0) = 0.5 for every token) are folded
into the shared expert's down projection. An explicit
head_dim (Mistral-NeMo's 32 heads of 128 over 5120) is kept as ours.
Weights stored in several dtypes are loaded in one (the config's, as transformers does).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from codefoundry.models import checkpoint
from codefoundry.models import tokenizer as tokenizer_module
from codefoundry.models.config import ROPE_SCALING_KEYS, ModelConfig, MoEConfig, yarn_attention_factor
from codefoundry.models.hf import INDEX, MODEL_TYPES, WEIGHTS, read_json_object
from codefoundry.models.transformer import Transformer
from codefoundry.paths import output_dir

__all__ = ["import_hf", "config_from_hf"]


def import_hf(
    src: Any,
    out: str | Path | None = None,
    *,
    max_seq_len: int | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Our `Transformer` (eval mode) computing what the HF Llama / Qwen2 / Qwen2-MoE / Mixtral model
    `src` computes; `src` is a checkpoint directory or a loaded transformers model. With `out` the
    result is also saved there as a codefoundry checkpoint, with `src`'s tokenizer files when present (a
    SentencePiece tokenizer.model alone is converted to a tokenizer.json; see `_tokenizer_dir`).

    `max_seq_len` overrides max_position_embeddings (the size of our rotary tables).
    """
    if max_seq_len is not None and max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    hf, sd, where, tok_dir = _read_source(src)
    cfg = config_from_hf(hf, where=where, max_seq_len=max_seq_len)
    dtype = dtype or _mixed_dtype(hf, sd)
    if out is None:
        return _converted(sd, hf, cfg, where, dtype)
    _check_import_dir(Path(out))  # before the conversion and its memory: a bad path fails at once
    with tempfile.TemporaryDirectory(prefix="cf-import-") as tmp:
        tokenizer = _tokenizer_dir(tok_dir, Path(tmp))  # likewise before: an unreadable one fails at once
        if tokenizer is not None:  # a garbage tokenizer.json, or another model's, was copied without a word
            ids = tokenizer_module.load(tokenizer).get_vocab().values()
            checkpoint.check_tokenizer_fits(tokenizer, ids, cfg.vocab_size)
        model = _converted(sd, hf, cfg, where, dtype)
        if tokenizer is None:  # an earlier import's tokenizer would pass for this model's
            for name in checkpoint.ALL_TOKENIZER_FILES:
                (Path(out) / name).unlink(missing_ok=True)
        checkpoint.save(model, out, tokenizer=tokenizer)
    return model


def _converted(
    sd: dict[str, torch.Tensor], hf: dict[str, Any], cfg: ModelConfig, where: str, dtype: torch.dtype | None
) -> Transformer:
    state, cfg = _state_from_hf(sd, hf, cfg, where=where)
    with torch.device("meta"):
        model = Transformer(cfg)
    checkpoint.load_state(model, state, where=where)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _tokenizer_dir(src: Path | None, tmp: Path) -> Path | None:
    """The directory whose tokenizer files the checkpoint gets: `src` when it has a tokenizer.json; else,
    when it has a SentencePiece tokenizer.model only (Llama 2, Mistral), `tmp` holding transformers'
    conversion of it (what AutoTokenizer loads from `src`), since a model imported without its tokenizer
    cannot be used; a one-line ValueError naming the file when that conversion fails."""
    if src is None or (src / "tokenizer.json").is_file():
        return src
    spm = src / "tokenizer.model"
    if not spm.is_file():
        return None
    try:
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # its notes on each fallback run to several lines
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(src))
        finally:
            transformers.logging.set_verbosity(verbosity)
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"it gave a {type(tok).__name__}, which has no tokenizer.json")
        tok.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").is_file():
            raise ValueError("its save wrote no tokenizer.json")
    except Exception as e:  # anything transformers raises here (ImportError, ValueError, a protobuf error)
        why = next(iter(str(e).strip().splitlines()), "") or type(e).__name__
        raise ValueError(
            f"{spm}: no tokenizer.json beside it and transformers could not convert it ({why}); install "
            "sentencepiece and protobuf (pip install sentencepiece protobuf) or save a tokenizer.json there"
        ) from None
    return tmp


def _mixed_dtype(hf: dict[str, Any], sd: dict[str, torch.Tensor]) -> torch.dtype | None:
    """One dtype for weights stored in several (norms in fp32 beside bf16 matrices, say), which made a
    model of mixed dtypes: the config's, as transformers loads them, else the one most weights are in."""
    sizes: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            sizes[v.dtype] = sizes.get(v.dtype, 0) + v.numel()
    if len(sizes) < 2:
        return None
    named = getattr(torch, str(hf.get("dtype") or hf.get("torch_dtype")), None)
    return named if named in sizes else max(sizes, key=sizes.__getitem__)


def _check_import_dir(out: Path) -> None:
    """Create `out`; refuse one holding a Hugging Face checkpoint (`src` itself, say) or a pretraining run's
    checkpoint (its trainer state beside the weights), which the import would overwrite: both used to be
    replaced without a word. An earlier import is replaced."""
    output_dir(out)
    config = out / "config.json"
    if config.is_file() and "model_type" in read_json_object(config):
        raise ValueError(
            f"{out}: holds a Hugging Face checkpoint, which the import would overwrite;"
            " import to a new or empty dir"
        )
    if (out / "trainer_state.pt").exists():  # train/trainer_state.py's TRAINER_STATE
        raise ValueError(
            f"{out}: holds a pretraining run's checkpoint, which the import would overwrite;"
            " import to a new or empty dir"
        )


def _read_source(src: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], str, Path | None]:
    """(config dict, state dict, a name for error messages, the directory holding tokenizer files)."""
    if not isinstance(src, str | Path):
        if not (hasattr(src, "config") and hasattr(src, "state_dict")):
            raise TypeError(
                f"import_hf: expected a checkpoint directory or a transformers model, got {src!r}"
            )
        # Copies: our model must not share storage with the caller's.
        sd = {k: v.detach().clone() for k, v in src.state_dict().items()}
        return src.config.to_dict(), sd, type(src).__name__, None
    path = Path(src)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    hf = read_json_object(path / "config.json")
    # The single file first, as transformers' from_pretrained reads them: with both, the index (a stale
    # one from an earlier sharded save, say) is not what transformers would load.
    if (path / WEIGHTS).is_file():
        files = [WEIGHTS]
    elif (path / INDEX).is_file():
        weight_map = read_json_object(path / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f"{path / INDEX}: no weight_map from tensor names to file names")
        files = sorted(set(weight_map.values()))
    else:
        raise ValueError(f"{path}: no {WEIGHTS} or {INDEX} (only safetensors weights are read)")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        sd.update(checkpoint.read_weights(path / name))  # a CheckpointError (ValueError) names the file
    return hf, sd, str(path), path


def config_from_hf(hf: dict[str, Any], *, where: str, max_seq_len: int | None = None) -> ModelConfig:
    """Our config for an HF config dict; a ValueError naming the field for what we cannot compute."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES.values():
        known = ", ".join(MODEL_TYPES.values())
        raise ValueError(f"{where}: model_type={model_type!r} is not supported (known: {known})")
    try:
        _check_counts(hf, model_type)
        # inside the try: a mistyped field is a ValueError naming `where`
        default = _HF_DEFAULTS[model_type]["max_position_embeddings"]
        _check_representable(hf, max_seq_len or hf.get("max_position_embeddings", default))
        return _config_from_hf(hf, model_type, where, max_seq_len)
    except KeyError as e:
        raise ValueError(f"{where}: the config has no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _config_from_hf(hf: dict[str, Any], model_type: str, where: str, max_seq_len: int | None) -> ModelConfig:
    moe = None
    if model_type == "qwen2_moe":
        moe = MoEConfig(
            n_experts=hf["num_experts"],
            top_k=hf["num_experts_per_tok"],
            expert_dim=hf["moe_intermediate_size"],
            shared_expert_dim=hf["shared_expert_intermediate_size"],
            shared_expert_gate=bool(hf["shared_expert_intermediate_size"]),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            aux_loss_coef=_aux_coef(hf),
        )
    elif model_type == "mixtral":
        moe = MoEConfig(
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            expert_dim=hf["intermediate_size"],
            norm_topk_prob=True,  # Mixtral always renormalises the top-k weights
            aux_loss_coef=_aux_coef(hf),
        )
    rope = hf.get("rope_parameters") or {}  # transformers 5; 4.x has a top-level rope_theta
    # Kept only where it differs from the derived width, so such imports' configs read as before.
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    default = _HF_DEFAULTS[model_type]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=None if head_dim * hf["num_attention_heads"] == hf["hidden_size"] else head_dim,
        ffn_dim=hf["intermediate_size"],
        max_seq_len=max_seq_len or hf.get("max_position_embeddings", default["max_position_embeddings"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", default["rope_theta"]))),
        rope_scaling=_rope_scaling_from_hf(
            hf, hf.get("max_position_embeddings", default["max_position_embeddings"])
        ),
        norm_eps=hf.get("rms_norm_eps", default["rms_norm_eps"]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # Qwen2 always has Q/K/V biases, Qwen2-MoE has them unless qkv_bias=false (transformers 5)
        qkv_bias=model_type == "qwen2" or (model_type == "qwen2_moe" and bool(hf.get("qkv_bias", True))),
        moe=moe,
        init_std=hf.get("initializer_range", 0.02),
        extra={"imported_from": where, "hf_model_type": model_type},
    )


def _rope_scaling_from_hf(hf: dict[str, Any], max_positions: int) -> dict[str, Any] | None:
    """Our `rope_scaling` for the HF config's (`_check_representable` has let through only what we
    compute, with every key its type needs); ModelConfig checks the values. `max_positions`: the HF
    config's max_position_embeddings (not the max_seq_len asked for), which YaRN falls back to."""
    # transformers 5 reads rope_scaling over rope_parameters; 4.x reads only rope_scaling
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    kind = _rope_type(rope)
    if kind == "default":
        return None
    if kind == "yarn":
        return _yarn_from_hf(hf, rope, max_positions)
    return {"rope_type": kind, **{k: rope[k] for k in ROPE_SCALING_KEYS[kind]}}


def _yarn_from_hf(hf: dict[str, Any], rope: dict[str, Any], max_positions: int) -> dict[str, Any]:
    """YaRN's keys as transformers 5 resolves them (`_compute_yarn_parameters`, `standardize_rope_params`):
    a top-level original_max_position_embeddings (Phi-3's place) over the scaling's own, else the config's
    max_position_embeddings; a null factor is their ratio; a missing, null or zero beta takes its default;
    attention_factor, when not given, derives from factor, mscale and mscale_all_dim (DeepSeek's); a null
    truncate is false (transformers tests its truth)."""
    original = hf.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    original = original or max_positions
    factor = rope["factor"] if rope["factor"] is not None else max_positions / original
    out = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    out.update({k: rope[k] for k in ("beta_fast", "beta_slow") if rope.get(k)})
    attention = rope.get("attention_factor")
    if attention is None and isinstance(factor, int | float) and not isinstance(factor, bool) and factor > 0:
        attention = yarn_attention_factor(factor, rope.get("mscale"), rope.get("mscale_all_dim"))
    out["attention_factor"] = attention
    out["truncate"] = bool(rope.get("truncate", True))
    return out


def _rope_type(rope: dict[str, Any]) -> Any:
    return rope.get("rope_type", rope.get("type", "default"))  # "type" in configs before transformers 4.45


def _aux_coef(hf: dict[str, Any]) -> float:
    """Our aux_loss_coef for transformers' router_aux_loss_coef: its loss is top_k times ours (see
    `hf._hf_aux_coef`), so the coefficient is too, for the same balancing strength."""
    return hf.get("router_aux_loss_coef", 0.001) * hf["num_experts_per_tok"]


# What transformers' config classes assume for a field config.json leaves out. Mixtral's differ: with
# Llama's (1e-6, 10000) for all four, a Mixtral config without them was imported with other logits.
_HF_DEFAULTS: dict[str, dict[str, float]] = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
    "qwen2_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
    "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 131072},
}
_COUNTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_MOE_COUNTS = {"qwen2_moe": ("num_experts", "moe_intermediate_size"), "mixtral": ("num_local_experts",)}


def _check_counts(hf: dict[str, Any], model_type: str) -> None:
    """The sizes the model is built from are positive integers (a KeyError names a missing one)."""
    optional = tuple(f for f in ("num_key_value_heads", "head_dim") if hf.get(f) is not None)
    moe = (*_MOE_COUNTS[model_type], "num_experts_per_tok") if model_type in _MOE_COUNTS else ()
    for field in (*_COUNTS, *moe, *optional):
        if type(hf[field]) is not int or hf[field] < 1:
            raise ValueError(f"{field}={hf[field]!r} is not a positive integer")


def _check_representable(hf: dict[str, Any], max_seq_len: int) -> None:
    """Refuse what our `Transformer` cannot compute for sequences of up to `max_seq_len` tokens."""

    def refuse(field: str, why: str) -> None:
        raise ValueError(f"{field}={hf.get(field)!r} is not supported ({why})")

    for field in ("rope_scaling", "rope_parameters"):
        rope = hf.get(field) or {}
        if not isinstance(rope, dict):
            refuse(field, "expected an object")
        kind = _rope_type(rope)
        if kind == "dynamic":
            refuse(field, "dynamic NTK RoPE depends on the running length, which no static table holds")
        if kind not in ("default", *ROPE_SCALING_KEYS):
            refuse(field, f"only plain, {', '.join(ROPE_SCALING_KEYS)} RoPE are implemented")
        # YaRN's original length falls back to max_position_embeddings, as in transformers
        needed = ("factor",) if kind == "yarn" else ROPE_SCALING_KEYS.get(kind, ())
        missing = [k for k in needed if k not in rope]
        if missing:
            refuse(field, f"rope_type {kind!r} needs {missing[0]!r}")
    if hf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "the MLP is SwiGLU")
    if hf.get("attention_bias"):
        refuse("attention_bias", "it puts a bias on o_proj too; only Q/K/V biases exist here")
    if hf.get("mlp_bias"):
        refuse("mlp_bias", "the MLP has no biases")
    # A window is checked against our max_seq_len, not the config's: past it the HF model attends to
    # fewer tokens. transformers 5 names each layer's attention in layer_types, which decides over the
    # flags: use_sliding_window with max_window_layers >= num_hidden_layers slides in no layer.
    window, layer_types = hf.get("sliding_window"), hf.get("layer_types")
    if layer_types is not None:
        if "sliding_attention" in layer_types and not (window and window >= max_seq_len):
            refuse("layer_types", "sliding-window attention is not implemented")
    elif hf.get("use_sliding_window", hf.get("model_type") == "mixtral") and window and window < max_seq_len:
        refuse("sliding_window", "sliding-window attention is not implemented")
    if hf.get("model_type") == "qwen2_moe":
        if hf.get("decoder_sparse_step", 1) != 1:
            refuse("decoder_sparse_step", "every layer here is MoE")
        if hf.get("mlp_only_layers"):
            refuse("mlp_only_layers", "every layer here is MoE")


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mixtral's released names (`block_sparse_moe`, `experts.e.w1/w3/w2`) to the Qwen2-MoE ones, and
    rotary buffers of old checkpoints dropped."""
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        k = k.replace(".block_sparse_moe.", ".mlp.")
        k = re.sub(r"(experts\.\d+\.)w([123])\.", lambda m: m[1] + _MIXTRAL_W[m[2]] + ".", k)
        out[k] = v
    return out


_MIXTRAL_W = {"1": "gate_proj", "2": "down_proj", "3": "up_proj"}


class _Tensors:
    """The HF state dict, consumed key by key so that leftovers (weights we would ignore) are caught."""

    def __init__(self, sd: dict[str, torch.Tensor], where: str) -> None:
        self.sd, self.where = _normalise_keys(sd), where
        # Emptied: the caller's dict kept every HF tensor alive beside its concatenated copy (Q/K/V,
        # gate/up), twice the model in memory; taken one by one, each is freed once converted.
        sd.clear()

    def has(self, key: str) -> bool:
        return key in self.sd

    def take(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise ValueError(f"{self.where}: the weights have no {key}")
        return self.sd.pop(key)

    def finish(self) -> None:
        if self.sd:
            extra = sorted(self.sd)
            raise ValueError(f"{self.where}: weights with no counterpart here: {', '.join(extra[:3])}")


def _state_from_hf(
    sd: dict[str, torch.Tensor], hf: dict[str, Any], cfg: ModelConfig, *, where: str
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Our state dict for the HF weights `sd` (emptied: see `_Tensors`), and `cfg` without Q/K/V biases
    or a shared expert when the weights hold only zeros there."""
    t = _Tensors(sd, where)
    ours = {"embed.weight": t.take("model.embed_tokens.weight"), "norm.weight": t.take("model.norm.weight")}
    if cfg.tie_embeddings:
        t.sd.pop("lm_head.weight", None)  # some exports store the tied copy as well
    else:
        ours["lm_head.weight"] = t.take("lm_head.weight")
    biases = []
    for i in range(cfg.n_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        ours[q + "attn_norm.weight"] = t.take(p + "input_layernorm.weight")
        ours[q + "mlp_norm.weight"] = t.take(p + "post_attention_layernorm.weight")
        ours[q + "attn.out.weight"] = t.take(p + "self_attn.o_proj.weight")
        proj = [p + f"self_attn.{n}_proj." for n in "qkv"]
        ours[q + "attn.qkv.weight"] = torch.cat([t.take(k + "weight") for k in proj])
        if cfg.qkv_bias:
            biases.append(torch.cat([t.take(k + "bias") for k in proj]))
            ours[q + "attn.qkv.bias"] = biases[-1]
        if cfg.moe is None:
            ours.update(_swiglu_from_hf(t, p + "mlp.", q + "mlp."))
        else:
            ours.update(_moe_from_hf(t, p + "mlp.", q + "mlp.", cfg))
    t.finish()
    if biases and not any(b.any() for b in biases):
        cfg = replace(cfg, qkv_bias=False)
        ours = {k: v for k, v in ours.items() if not k.endswith("qkv.bias")}
    gates = [v for k, v in ours.items() if k.endswith("shared_gate.weight")]
    if gates and not any(w.any() for w in gates):
        # sigmoid(0) = 0.5 for every token: the same model with the down projection halved and no gate
        # (scaling by a power of two is exact), as our own exports write gate-less models.
        cfg = replace(cfg, moe=replace(cfg.moe, shared_expert_gate=False))
        ours = {k: v * 0.5 if k.endswith("shared.down.weight") else v
                for k, v in ours.items() if not k.endswith("shared_gate.weight")}  # fmt: skip
    shared = [v for k, v in ours.items() if k.endswith("shared.down.weight")]
    if shared and not any(w.any() for w in shared):
        cfg = replace(cfg, moe=replace(cfg.moe, shared_expert_dim=0, shared_expert_gate=False))
        ours = {k: v for k, v in ours.items() if ".shared." not in k and not k.endswith("shared_gate.weight")}
    return ours, cfg


def _swiglu_from_hf(t: _Tensors, src: str, dst: str) -> dict[str, torch.Tensor]:
    gate_up = torch.cat([t.take(src + "gate_proj.weight"), t.take(src + "up_proj.weight")])
    return {dst + "gate_up.weight": gate_up, dst + "down.weight": t.take(src + "down_proj.weight")}


def _moe_from_hf(t: _Tensors, src: str, dst: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    ours = {dst + "router.weight": t.take(src + "gate.weight")}
    if t.has(src + "experts.gate_up_proj"):
        # transformers 5 in memory: (E, 2I, dim) with gate rows first, and (E, dim, I)
        gate_up, down = t.take(src + "experts.gate_up_proj"), t.take(src + "experts.down_proj")
        for e in range(cfg.moe.n_experts):
            # clones: views of one tensor would share storage, which safetensors refuses to save
            ours[dst + f"experts.{e}.gate_up.weight"] = gate_up[e].clone()
            ours[dst + f"experts.{e}.down.weight"] = down[e].clone()
    else:
        for e in range(cfg.moe.n_experts):
            ours.update(_swiglu_from_hf(t, src + f"experts.{e}.", dst + f"experts.{e}."))
    if cfg.moe.shared_expert_dim:
        ours[dst + "shared_gate.weight"] = t.take(src + "shared_expert_gate.weight")  # (1, dim)
        ours.update(_swiglu_from_hf(t, src + "shared_expert.", dst + "shared."))
    return ours
