"""Hugging Face export: a codefoundry checkpoint to a `transformers` checkpoint directory with the same
logits. The other way (Llama / Qwen2 / Qwen2-MoE / Mixtral checkpoints into our `Transformer`) is
`hf_import.py`, which shares this module's names and file helpers.

Which class an exported model becomes, and why each choice is exact (fp32 logits agree to ~1e-6):

* dense, no Q/K/V bias -> `LlamaForCausalLM`. Llama's `attention_bias` would also put a bias on o_proj,
  so a model with Q/K/V biases only is not a Llama;
* dense with Q/K/V biases -> `Qwen2ForCausalLM` (biases on q, k, v and none on o_proj, as ours);
* MoE without a shared expert, renormalised top-k, no Q/K/V bias -> `MixtralForCausalLM`: its router is
  ours (fp32 softmax over all experts, top-k, always renormalised);
* every other MoE -> `Qwen2MoeForCausalLM`, whose router has the `norm_topk_prob` switch. Its shared
  expert is gated per token by sigmoid(w . x); a model with `moe.shared_expert_gate` writes its gate as
  is. One without gets a zero gate weight, sigmoid(0) = 0.5 for every token, and the shared expert's down
  projection written doubled, so 0.5 * (2W)h = Wh exactly (scaling by a power of two commutes with
  rounding). A model with no shared expert gets a width-1 shared expert of zeros, which adds exactly 0.
  Q/K/V biases are always written (zeros when the model has none) so that transformers 4.x, where
  Qwen2-MoE biases are unconditional, reads the same files.

Experts are written one tensor per expert under the names the released checkpoints use (what
`save_pretrained` writes too); transformers 5 fuses them into 3-D tensors on load.

Not exported: the multi-token-prediction modules (no equivalent in these classes; the export predicts
the next token only, and the result dict says so), and token dropping: a model with
`moe.capacity_factor > 0` drops tokens past an expert's capacity while the HF classes are dropless, so
its export is refused unless `allow_dropless=True`.

An export replaces an earlier export (its safetensors metadata carries `EXPORT_MARK`) and refuses any
other directory holding files it would overwrite, a Hugging Face checkpoint included.

The load-balancing coefficient is written divided by top_k (`_hf_aux_coef`): transformers' loss is top_k
times ours, so the exported model trains with the same balancing strength.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from codefoundry.models import checkpoint
from codefoundry.models.config import ModelConfig
from codefoundry.models.transformer import Transformer
from codefoundry.paths import output_dir

__all__ = ["export_hf", "hf_architecture", "hf_state_dict", "to_transformers"]

LLAMA, QWEN2, QWEN2_MOE, MIXTRAL = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM",
    "MixtralForCausalLM",
)
MODEL_TYPES = {LLAMA: "llama", QWEN2: "qwen2", QWEN2_MOE: "qwen2_moe", MIXTRAL: "mixtral"}
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
EXPORT_MARK = "hf-export"  # in an export's safetensors metadata: a rerun may replace that directory


# ---------------------------------------------------------------------------------------------- export


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers class that computes exactly what a model with `cfg` computes."""
    if cfg.moe is None:
        return QWEN2 if cfg.qkv_bias else LLAMA
    if not cfg.moe.shared_expert_dim and cfg.moe.norm_topk_prob and not cfg.qkv_bias:
        return MIXTRAL
    return QWEN2_MOE


def export_hf(ckpt: str | Path, out: str | Path, *, allow_dropless: bool = False) -> dict[str, Any]:
    """Write the codefoundry checkpoint `ckpt` as a Hugging Face checkpoint in `out` (config.json,
    model.safetensors, generation_config.json and the tokenizer files); returns what was written.

    The result's `warnings` lists what the export left out (MTP modules, a missing tokenizer).
    """
    ckpt, out = Path(ckpt), Path(out)
    if out.resolve() == ckpt.resolve():
        raise ValueError(
            f"{out}: the export would overwrite the checkpoint's own config.json; pick another dir"
        )
    model = checkpoint.load(ckpt)
    cfg, arch = model.cfg, hf_architecture(model.cfg)
    notes = _left_out(cfg, arch, where=str(ckpt), allow_dropless=allow_dropless)
    has_tok = (ckpt / "tokenizer.json").is_file()
    # Read (and so checked) before anything is written: the export copies these same files.
    token_ids = special_token_ids(ckpt) if has_tok else dict.fromkeys(TOKEN_ID_KEYS)
    if has_tok:
        checkpoint.check_tokenizer_fits(ckpt, _vocab(ckpt / "tokenizer.json").values(), cfg.vocab_size)
    _check_export_dir(out)
    # The weights first: they carry the export's mark, so a rerun after a kill anywhere below finds a
    # directory it may replace (written after the tokenizer, a kill between left one it refused).
    state = hf_state_dict(model)
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    write_weights(state, out / WEIGHTS)
    (out / INDEX).unlink(missing_ok=True)  # a stale shard index would point loaders at other files
    for name in checkpoint.ALL_TOKENIZER_FILES:  # an earlier export's files would pass for this model's
        (out / name).unlink(missing_ok=True)
    if has_tok:
        checkpoint.copy_tokenizer(ckpt, out)
    else:
        notes.append(f"{ckpt} has no tokenizer.json: the export has no tokenizer files")
    config = hf_config(cfg, arch, dtype=dtype, token_ids=token_ids)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {**token_ids, "_from_model_config": False})
    return {
        "out": str(out),
        "architecture": arch,
        "model_type": MODEL_TYPES[arch],
        "dtype": dtype,
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
        "tokenizer": (out / "tokenizer.json").is_file(),
        **token_ids,
        "warnings": notes,
    }


def _check_export_dir(out: Path) -> None:
    """Create `out`; refuse one holding files the export overwrites, unless it is an earlier export."""
    output_dir(out)
    written = ("config.json", WEIGHTS, INDEX, "generation_config.json", *checkpoint.ALL_TOKENIZER_FILES)
    clobbered = [name for name in written if (out / name).exists()]
    if not clobbered or _is_export(out):  # an earlier export, finished or killed before its config.json
        return
    config = out / "config.json"
    if not (config.is_file() and "model_type" in read_json_object(config)):
        raise ValueError(
            f"{out}: holds {clobbered[0]} and is not a Hugging Face checkpoint; export to a new or empty dir"
        )
    # Any Hugging Face checkpoint passed for an earlier export: exported into the directory a model was
    # imported from, the export replaced its weights (and orphaned its shards).
    raise ValueError(
        f"{out}: holds a Hugging Face checkpoint this export did not write, which it would overwrite;"
        " export to a new or empty dir"
    )


def _is_export(out: Path) -> bool:
    """Whether `out` holds weights `write_weights` wrote (its mark in the safetensors metadata)."""
    from safetensors import SafetensorError, safe_open

    if (out / INDEX).exists() or not (out / WEIGHTS).is_file():
        return False
    try:
        with safe_open(str(out / WEIGHTS), "pt") as f:
            return (f.metadata() or {}).get("codefoundry") == EXPORT_MARK
    except (SafetensorError, OSError):  # a torn file is no export of ours
        return False


def _left_out(cfg: ModelConfig, arch: str, *, where: str, allow_dropless: bool) -> list[str]:
    """What the export cannot carry, as warning lines; a ValueError for what would change the logits."""
    notes = []
    if cfg.moe is not None and cfg.moe.capacity_factor > 0:
        if not allow_dropless:
            raise ValueError(
                f"{where}: moe.capacity_factor={cfg.moe.capacity_factor} drops tokens past an expert's "
                "capacity and the Hugging Face MoE classes are dropless, so the logits would differ "
                "(pass allow_dropless=True to export the dropless model)"
            )
        notes.append(f"moe.capacity_factor={cfg.moe.capacity_factor} not exported: the HF model is dropless")
    if cfg.mtp_depth:
        notes.append(
            f"dropped {cfg.mtp_depth} multi-token-prediction module(s): {arch} has no equivalent, "
            "the export predicts the next token only"
        )
    return notes


def to_transformers(model: Transformer, *, attn_implementation: str = "sdpa"):
    """The same network as a transformers model (Llama, Qwen2, Qwen2-MoE or Mixtral, as
    `hf_architecture` picks; MTP modules left out), loaded through `from_pretrained` from a temporary
    export, so transformers' own weight conversion (fused MoE experts in v5) applies. Needs transformers."""
    import tempfile

    import transformers

    arch = hf_architecture(model.cfg)
    _left_out(model.cfg, arch, where="to_transformers", allow_dropless=False)
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    none = dict.fromkeys(TOKEN_ID_KEYS)
    with tempfile.TemporaryDirectory(prefix="cf-hf-") as tmp:
        write_weights(hf_state_dict(model), Path(tmp) / WEIGHTS)
        _write_json(Path(tmp) / "config.json", hf_config(model.cfg, arch, dtype=dtype, token_ids=none))
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, attn_implementation=attn_implementation, dtype=model.embed.weight.dtype
        )
    return hf.eval()


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under the names (and splits) of `hf_architecture(model.cfg)`; MTP modules left out.

    Every tensor is a fresh contiguous copy: safetensors refuses tensors that share storage, and the
    Q/K/V and gate/up splits are views of one fused matrix.
    """
    cfg, arch = model.cfg, hf_architecture(model.cfg)
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = layer.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = layer.mlp_norm.weight
        sd[p + "self_attn.o_proj.weight"] = layer.attn.out.weight
        q, k, v = layer.attn.qkv.weight.split(_qkv_rows(cfg))
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k})
        sd[p + "self_attn.v_proj.weight"] = v
        if cfg.qkv_bias or arch == QWEN2_MOE:
            bias = layer.attn.qkv.bias
            if bias is None:  # Qwen2-MoE under transformers 4.x always has these
                bias = torch.zeros(layer.attn.qkv.weight.shape[0], dtype=q.dtype, device=q.device)
            for name, b in zip("qkv", bias.split(_qkv_rows(cfg)), strict=True):
                sd[p + f"self_attn.{name}_proj.bias"] = b
        if cfg.moe is None:
            sd.update(_swiglu_to_hf(p + "mlp.", layer.mlp))
        elif arch == MIXTRAL:
            sd[p + "block_sparse_moe.gate.weight"] = layer.mlp.router.weight
            for e, expert in enumerate(layer.mlp.experts):
                gate, up = expert.gate_up.weight.split(expert.hidden)
                ep = p + f"block_sparse_moe.experts.{e}."
                sd.update(
                    {ep + "w1.weight": gate, ep + "w3.weight": up, ep + "w2.weight": expert.down.weight}
                )
        else:
            sd.update(_qwen2_moe_to_hf(p + "mlp.", layer.mlp, cfg.dim))
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in sd.items()}


def _qkv_rows(cfg: ModelConfig) -> list[int]:
    return [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]


def _swiglu_to_hf(prefix: str, mlp) -> dict[str, torch.Tensor]:
    gate, up = mlp.gate_up.weight.split(mlp.hidden)  # (hidden, dim) each: gate rows first
    return {
        prefix + "gate_proj.weight": gate,
        prefix + "up_proj.weight": up,
        prefix + "down_proj.weight": mlp.down.weight,
    }


def _qwen2_moe_to_hf(prefix: str, moe, dim: int) -> dict[str, torch.Tensor]:
    w = moe.router.weight
    sd = {prefix + "gate.weight": w}
    for e, expert in enumerate(moe.experts):
        sd.update(_swiglu_to_hf(prefix + f"experts.{e}.", expert))
    zeros = torch.zeros(1, dim, dtype=w.dtype, device=w.device)
    if moe.shared is not None:
        shared = _swiglu_to_hf(prefix + "shared_expert.", moe.shared)
        if moe.shared_gate is None:
            # sigmoid(0) = 0.5 halves the shared expert's output: write its down projection doubled.
            shared[prefix + "shared_expert.down_proj.weight"] = 2 * moe.shared.down.weight
    else:
        shared = {prefix + f"shared_expert.{n}_proj.weight": zeros for n in ("gate", "up")}
        shared[prefix + "shared_expert.down_proj.weight"] = zeros.T
    sd.update(shared)
    gate = moe.shared_gate.weight if moe.shared_gate is not None else zeros  # (1, dim)
    sd[prefix + "shared_expert_gate.weight"] = gate
    return sd


def hf_config(cfg: ModelConfig, arch: str, *, dtype: str, token_ids: dict[str, int | None]) -> dict[str, Any]:
    """config.json for `arch`, readable by transformers 4.x (`rope_theta`, `rope_scaling`, `torch_dtype`)
    and 5.x (`rope_parameters`, `dtype`)."""
    d: dict[str, Any] = {
        "architectures": [arch],
        "model_type": MODEL_TYPES[arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
        **token_ids,
    }
    if cfg.rope_scaling is not None:
        # transformers 4.x reads only this; 5.x reads it over rope_parameters, taking rope_theta from above
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if arch == LLAMA:
        d.update(attention_bias=False, mlp_bias=False)
    if arch in (QWEN2, QWEN2_MOE):
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    if arch == QWEN2_MOE:
        d.update(
            num_experts=cfg.moe.n_experts,
            num_experts_per_tok=cfg.moe.top_k,
            moe_intermediate_size=cfg.moe.expert_dim,
            shared_expert_intermediate_size=cfg.moe.shared_expert_dim or 1,
            norm_topk_prob=cfg.moe.norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            router_aux_loss_coef=_hf_aux_coef(cfg),
            qkv_bias=True,
        )
    if arch == MIXTRAL:
        d.update(
            num_local_experts=cfg.moe.n_experts,
            num_experts_per_tok=cfg.moe.top_k,
            intermediate_size=cfg.moe.expert_dim,
            sliding_window=None,
            router_aux_loss_coef=_hf_aux_coef(cfg),
            router_jitter_noise=0.0,
        )
    return d


def _hf_aux_coef(cfg: ModelConfig) -> float:
    """transformers' `router_aux_loss_coef` that weighs the load balancing as ours does: its loss counts
    f_e over the N tokens, not the k * N assignments, so it is top_k times ours (top_k when balanced, ours
    1.0); written as is, the HF model balanced top_k times harder. `hf_import` multiplies back."""
    return cfg.moe.aux_loss_coef / cfg.moe.top_k


def special_token_ids(tok_dir: str | Path) -> dict[str, int | None]:
    """bos/eos/pad ids of the tokenizer in `tok_dir`, from the token strings its tokenizer_config.json
    (or special_tokens_map.json) names (None where none is named), so config.json agrees with what
    AutoTokenizer loads."""
    tok_dir = Path(tok_dir)
    vocab = _vocab(tok_dir / "tokenizer.json")
    conf_path, map_path = tok_dir / "tokenizer_config.json", tok_dir / "special_tokens_map.json"
    conf = read_json_object(conf_path) if conf_path.is_file() else {}
    named = dict.fromkeys(("bos", "eos", "pad"), conf_path)
    # As transformers reads them: a tokenizer_config.json without added_tokens_decoder (an older save)
    # takes its special tokens from special_tokens_map.json where that names them.
    if "added_tokens_decoder" not in conf and map_path.is_file():
        special = read_json_object(map_path)
        conf = {**conf, **special}
        named.update({role: map_path for role in named if f"{role}_token" in special})
    ids: dict[str, int | None] = {}
    for role in ("bos", "eos", "pad"):
        token = conf.get(f"{role}_token")
        if isinstance(token, dict):  # the AddedToken form: {"content": "<|endoftext|>", ...}
            token = token.get("content")
        if token is not None and not isinstance(token, str):  # a list was a traceback ("unhashable")
            raise ValueError(f"{named[role]}: {role}_token must be a token string or null, got {token!r}")
        if token is not None and token not in vocab:
            raise ValueError(f"{named[role]}: {role}_token {token!r} is not in tokenizer.json")
        ids[f"{role}_token_id"] = vocab[token] if token is not None else None
    return ids


def _vocab(path: Path) -> dict[str, int]:
    """Token string -> id of a tokenizer.json: BPE and WordLevel models map pieces to ids, a Unigram
    (SentencePiece) model lists [piece, score] pairs in id order (read as a mapping, the ids were scores)."""
    data = read_json_object(path)
    model, added = data.get("model") or {}, data.get("added_tokens", [])
    pieces = (model.get("vocab") or {}) if isinstance(model, dict) else None
    if isinstance(pieces, list):
        pieces = {entry[0]: i for i, entry in enumerate(pieces) if isinstance(entry, list) and entry}
    # Checked, as a tokenizer.json that is JSON but not a tokenizer's ended the export in a traceback.
    if not isinstance(pieces, dict) or not all(type(i) is int for i in pieces.values()):
        raise ValueError(f"{path}: model.vocab is not a map of tokens to integer ids")
    if not isinstance(added, list) or not all(
        isinstance(t, dict) and isinstance(t.get("content"), str) and type(t.get("id")) is int for t in added
    ):
        raise ValueError(f"{path}: added_tokens is not a list of tokens with a content and an integer id")
    vocab = dict(pieces)
    vocab.update({t["content"]: t["id"] for t in added})
    return vocab


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; a ValueError naming the file when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")  # renamed into place: a killed export leaves no torn file
    save_file(state, str(tmp), metadata={"format": "pt", "codefoundry": EXPORT_MARK})
    tmp.replace(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
