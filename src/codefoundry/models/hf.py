"""Hugging Face export and import: a codefoundry checkpoint to a `transformers` checkpoint directory
with the same logits, and Llama / Qwen2 / Qwen2-MoE / Mixtral checkpoints back into our `Transformer`.

Which class an exported model becomes, and why each choice is exact (fp32 logits agree to ~1e-6):

* dense, no Q/K/V bias -> `LlamaForCausalLM`. Llama's `attention_bias` would also put a bias on o_proj,
  so a model with Q/K/V biases only is not a Llama;
* dense with Q/K/V biases -> `Qwen2ForCausalLM` (biases on q, k, v and none on o_proj, as ours);
* MoE without a shared expert, renormalised top-k, no Q/K/V bias -> `MixtralForCausalLM`: its router is
  ours (fp32 softmax over all experts, top-k, always renormalised);
* every other MoE -> `Qwen2MoeForCausalLM`, whose router has the `norm_topk_prob` switch. Its shared
  expert is gated per token by sigmoid(w . x); ours has no gate. A zero gate weight gives
  sigmoid(0) = 0.5 for every token, and the shared expert's down projection is written doubled, so
  0.5 * (2W)h = Wh exactly (scaling by a power of two commutes with rounding). A model with no shared
  expert gets a width-1 shared expert of zeros, which adds exactly 0. Q/K/V biases are always written
  (zeros when the model has none) so that transformers 4.x, where Qwen2-MoE biases are unconditional,
  reads the same files.

Experts are written one tensor per expert under the names the released checkpoints use (what
`save_pretrained` writes too); transformers 5 fuses them into 3-D tensors on load.

Not exported: the multi-token-prediction modules (no equivalent in these classes; the export predicts
the next token only, and the result dict says so), and token dropping: a model with
`moe.capacity_factor > 0` drops tokens past an expert's capacity while the HF classes are dropless, so
its export is refused unless `allow_dropless=True`.

Import reads config.json and safetensors weights (one file or shards with model.safetensors.index.json)
without transformers, or takes a loaded transformers model. It refuses, naming the config field, what
our `Transformer` cannot compute exactly: RoPE scaling, an active sliding window, biases beyond Q/K/V,
head_dim != hidden_size / heads, a non-SiLU MLP, a Qwen2-MoE shared-expert gate that is not zero, and
dense layers inside a Qwen2-MoE. All-zero Q/K/V biases and all-zero shared experts are dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from codefoundry.models import checkpoint
from codefoundry.models.config import ModelConfig, MoEConfig
from codefoundry.models.transformer import Transformer

__all__ = ["export_hf", "import_hf", "hf_architecture", "hf_state_dict", "config_from_hf"]

LLAMA, QWEN2, QWEN2_MOE, MIXTRAL = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM",
    "MixtralForCausalLM",
)
MODEL_TYPES = {LLAMA: "llama", QWEN2: "qwen2", QWEN2_MOE: "qwen2_moe", MIXTRAL: "mixtral"}
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"


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
    out.mkdir(parents=True, exist_ok=True)
    if (ckpt / "tokenizer.json").is_file():
        checkpoint.copy_tokenizer(ckpt, out)
        token_ids = special_token_ids(out)
    else:
        notes.append(f"{ckpt} has no tokenizer.json: the export has no tokenizer files")
        token_ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}

    state = hf_state_dict(model)
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    write_weights(state, out / WEIGHTS)
    (out / INDEX).unlink(missing_ok=True)  # a stale shard index would point loaders at other files
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
    none = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
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
    if moe.shared is not None:
        shared = _swiglu_to_hf(prefix + "shared_expert.", moe.shared)
        # sigmoid(0) = 0.5 halves the shared expert's output: write its down projection doubled.
        shared[prefix + "shared_expert.down_proj.weight"] = 2 * moe.shared.down.weight
    else:
        zeros = torch.zeros(1, dim, dtype=w.dtype, device=w.device)
        shared = {prefix + f"shared_expert.{n}_proj.weight": zeros for n in ("gate", "up")}
        shared[prefix + "shared_expert.down_proj.weight"] = zeros.T
    sd.update(shared)
    sd[prefix + "shared_expert_gate.weight"] = torch.zeros(1, dim, dtype=w.dtype, device=w.device)
    return sd


def hf_config(cfg: ModelConfig, arch: str, *, dtype: str, token_ids: dict[str, int | None]) -> dict[str, Any]:
    """config.json for `arch`, readable by transformers 4.x (`rope_theta`, `torch_dtype`) and 5.x
    (`rope_parameters`, `dtype`)."""
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
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
        **token_ids,
    }
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
            router_aux_loss_coef=cfg.moe.aux_loss_coef,
            qkv_bias=True,
        )
    if arch == MIXTRAL:
        d.update(
            num_local_experts=cfg.moe.n_experts,
            num_experts_per_tok=cfg.moe.top_k,
            intermediate_size=cfg.moe.expert_dim,
            sliding_window=None,
            router_aux_loss_coef=cfg.moe.aux_loss_coef,
            router_jitter_noise=0.0,
        )
    return d


def special_token_ids(tok_dir: str | Path) -> dict[str, int | None]:
    """bos/eos/pad ids of the tokenizer in `tok_dir`, from the token strings its tokenizer_config.json
    names (None where it names none), so config.json agrees with what AutoTokenizer loads."""
    tok_dir = Path(tok_dir)
    vocab = _vocab(tok_dir / "tokenizer.json")
    conf_path = tok_dir / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8")) if conf_path.is_file() else {}
    ids: dict[str, int | None] = {}
    for role in ("bos", "eos", "pad"):
        token = conf.get(f"{role}_token")
        if isinstance(token, dict):  # the AddedToken form: {"content": "<|endoftext|>", ...}
            token = token.get("content")
        if token is not None and token not in vocab:
            raise ValueError(f"{conf_path}: {role}_token {token!r} is not in tokenizer.json")
        ids[f"{role}_token_id"] = vocab[token] if token is not None else None
    return ids


def _vocab(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = dict(data.get("model", {}).get("vocab", {}))
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab


def write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")  # renamed into place: a killed export leaves no torn file
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- import


def import_hf(
    src: Any,
    out: str | Path | None = None,
    *,
    max_seq_len: int | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Our `Transformer` (eval mode) computing what the HF Llama / Qwen2 / Qwen2-MoE / Mixtral model
    `src` computes; `src` is a checkpoint directory or a loaded transformers model. With `out` the
    result is also saved there as a codefoundry checkpoint, with `src`'s tokenizer files when present.

    `max_seq_len` overrides max_position_embeddings (the size of our rotary tables).
    """
    hf, sd, where, tok_dir = _read_source(src)
    cfg = config_from_hf(hf, where=where, max_seq_len=max_seq_len)
    state, cfg = _state_from_hf(sd, hf, cfg, where=where)
    with torch.device("meta"):
        model = Transformer(cfg)
    checkpoint.load_state(model, state, where=where)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    if out is not None:
        has_tok = tok_dir is not None and (tok_dir / "tokenizer.json").is_file()
        checkpoint.save(model, out, tokenizer=tok_dir if has_tok else None)
    return model


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
    try:
        hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path / INDEX}: no readable weight_map ({e!r})") from None
        files = sorted(set(weight_map.values()))
    elif (path / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise ValueError(f"{path}: no {WEIGHTS} or {INDEX} (only safetensors weights are read)")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        sd.update(_load_safetensors(path / name))
    return hf, sd, str(path), path


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: cannot read the weights ({e})") from None


def config_from_hf(hf: dict[str, Any], *, where: str, max_seq_len: int | None = None) -> ModelConfig:
    """Our config for an HF config dict; a ValueError naming the field for what we cannot compute."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES.values():
        known = ", ".join(MODEL_TYPES.values())
        raise ValueError(f"{where}: model_type={model_type!r} is not supported (known: {known})")
    _check_representable(hf, where)
    try:
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
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
        )
    elif model_type == "mixtral":
        moe = MoEConfig(
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            expert_dim=hf["intermediate_size"],
            norm_topk_prob=True,  # Mixtral always renormalises the top-k weights
            aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
        )
    rope = hf.get("rope_parameters") or {}  # transformers 5; 4.x has a top-level rope_theta
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        max_seq_len=max_seq_len or hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # Qwen2 always has Q/K/V biases, Qwen2-MoE has them unless qkv_bias=false (transformers 5)
        qkv_bias=model_type == "qwen2" or (model_type == "qwen2_moe" and bool(hf.get("qkv_bias", True))),
        moe=moe,
        init_std=hf.get("initializer_range", 0.02),
        extra={"imported_from": where, "hf_model_type": model_type},
    )


def _check_representable(hf: dict[str, Any], where: str) -> None:
    def refuse(field: str, why: str) -> None:
        raise ValueError(f"{where}: {field}={hf.get(field)!r} is not supported ({why})")

    for field in ("rope_scaling", "rope_parameters"):
        rope = hf.get(field) or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            refuse(field, "only plain RoPE is implemented")
    if hf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "the MLP is SwiGLU")
    if hf.get("attention_bias"):
        refuse("attention_bias", "it puts a bias on o_proj too; only Q/K/V biases exist here")
    if hf.get("mlp_bias"):
        refuse("mlp_bias", "the MLP has no biases")
    heads = hf.get("num_attention_heads") or 1
    if hf.get("head_dim") is not None and hf["head_dim"] != hf.get("hidden_size", 0) // heads:
        refuse("head_dim", "head_dim must be hidden_size / num_attention_heads")
    if "sliding_attention" in (hf.get("layer_types") or []):
        refuse("layer_types", "sliding-window attention is not implemented")
    window = hf.get("sliding_window")
    uses_window = hf.get("use_sliding_window", hf.get("model_type") == "mixtral")
    if uses_window and window and window < hf.get("max_position_embeddings", 0):
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
    """Our state dict for the HF weights, and `cfg` without Q/K/V biases or a shared expert when the
    weights hold only zeros there."""
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
    shared = [v for k, v in ours.items() if k.endswith("shared.down.weight")]
    if shared and not any(w.any() for w in shared):
        cfg = replace(cfg, moe=replace(cfg.moe, shared_expert_dim=0))
        ours = {k: v for k, v in ours.items() if ".shared." not in k}
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
        gate = t.take(src + "shared_expert_gate.weight")
        if gate.any():
            raise ValueError(
                f"{t.where}: {src}shared_expert_gate.weight is not zero; the shared expert here has no "
                "per-token gate, so this model has no exact equivalent"
            )
        shared = _swiglu_from_hf(t, src + "shared_expert.", dst + "shared.")
        shared[dst + "shared.down.weight"] = shared[dst + "shared.down.weight"] * 0.5  # sigmoid(0)
        ours.update(shared)
    return ours
