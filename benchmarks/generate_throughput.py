"""Greedy generation speed: `codefoundry.models.generate` vs transformers' `LlamaForCausalLM.generate` on
the same weights, same prompts, same thread count, in the same run; plus self-speculative decoding (MTP
drafts) vs plain greedy on a model with one MTP module.

The ~10M-parameter model (`config_for_size("10m", vocab)`, random weights) is exported to a Llama with a
small mapping written here (fused Q/K/V and gate/up split), and the two models' logits must agree to
1e-4 before anything is timed. Each measurement is prompt (`--prompt` random tokens) + `--new` greedy
tokens with no stop token, counted as new tokens per second of the whole call (prefill included); the
two implementations alternate `--repeat` times and medians are reported.

    python benchmarks/generate_throughput.py --repeat 5 --json benchmarks/results/generate_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from codefoundry.models.config import ModelConfig, config_for_size
from codefoundry.models.generate import generate, speculative_decode
from codefoundry.models.transformer import Transformer


def to_llama(model: Transformer):
    """The same weights as a transformers `LlamaForCausalLM` (dense models without MTP only)."""
    import transformers

    cfg: ModelConfig = model.cfg
    if cfg.moe is not None or cfg.qkv_bias:
        # Llama's attention_bias also puts a bias on o_proj: Q/K/V-only biases are Qwen2's layout.
        raise ValueError("to_llama: only dense models without Q/K/V biases map onto a Llama")
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        pre = f"model.layers.{i}."
        wq, wk, wv = layer.attn.qkv.weight.split([q, kv, kv])  # fused rows: Q, then K, then V
        gate, up = layer.mlp.gate_up.weight.split(layer.mlp.hidden)  # fused rows: gate, then up
        sd |= {
            pre + "input_layernorm.weight": layer.attn_norm.weight,
            pre + "self_attn.q_proj.weight": wq, pre + "self_attn.k_proj.weight": wk,
            pre + "self_attn.v_proj.weight": wv, pre + "self_attn.o_proj.weight": layer.attn.out.weight,
            pre + "post_attention_layernorm.weight": layer.mlp_norm.weight,
            pre + "mlp.gate_proj.weight": gate, pre + "mlp.up_proj.weight": up,
            pre + "mlp.down_proj.weight": layer.mlp.down.weight,
        }  # fmt: skip
    hf = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"to_llama: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    hf.generation_config.eos_token_id = None  # never stop early: every call makes exactly --new tokens
    return hf.eval()


def check_logits(model: Transformer, hf, vocab: int) -> float:
    ids = torch.randint(0, vocab, (2, 48))
    with torch.inference_mode():
        diff = (model(ids).logits - hf(ids).logits).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"the exported Llama disagrees with the model: max |logit diff| = {diff:.2e}")
    return diff


def time_ours(model: Transformer, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    out = generate(model, prompts.tolist(), max_new_tokens=new)
    return time.perf_counter() - t, out


def time_hf(hf, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
            max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
        )  # fmt: skip
    return time.perf_counter() - t, out[:, prompts.shape[1] :].tolist()


def compare(model: Transformer, hf, batch: int, args) -> dict:
    prompts = torch.randint(0, model.cfg.vocab_size, (batch, args.prompt))
    time_ours(model, prompts, 8), time_hf(hf, prompts, 8)  # warm up both
    ours, theirs = [], []
    for _ in range(args.repeat):
        t, ours_out = time_ours(model, prompts, args.new)
        ours.append(batch * args.new / t)
        t, hf_out = time_hf(hf, prompts, args.new)
        theirs.append(batch * args.new / t)
    same = sum(a == b for a, b in zip(ours_out, hf_out, strict=True))
    return {
        "batch": batch,
        "codefoundry_tokens_per_s": round(statistics.median(ours), 1),
        "transformers_tokens_per_s": round(statistics.median(theirs), 1),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
        "all_codefoundry": [round(x, 1) for x in ours],
        "all_transformers": [round(x, 1) for x in theirs],
        "rows_with_identical_tokens": f"{same}/{batch}",
    }


def speculative(vocab: int, args) -> dict:
    torch.manual_seed(1)
    model = Transformer(config_for_size("10m", vocab, mtp_depth=1)).eval()
    prompt = torch.randint(0, vocab, (args.prompt,)).tolist()
    plain_times, spec_times, results = [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        plain = generate(model, [prompt], max_new_tokens=args.new)[0]
        plain_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        results.append(speculative_decode(model, prompt, max_new_tokens=args.new))
        spec_times.append(time.perf_counter() - t)
        if results[-1].tokens != plain:
            raise SystemExit("speculative decoding did not reproduce greedy decoding")
    r = results[-1]
    return {
        "mtp_depth": 1,
        "plain_tokens_per_s": round(args.new / statistics.median(plain_times), 1),
        "speculative_tokens_per_s": round(args.new / statistics.median(spec_times), 1),
        "ratio": round(statistics.median(plain_times) / statistics.median(spec_times), 2),
        "acceptance": round(r.acceptance, 3),
        "main_forwards": r.forwards,
        "weights": "random (untrained): drafts are rarely right",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeat", type=int, default=3, help="alternate the two this many times; medians")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(config_for_size("10m", args.vocab)).eval()
    hf = to_llama(model)
    diff = check_logits(model, hf, args.vocab)
    rows = [compare(model, hf, int(b), args) for b in args.batches.split(",")]
    spec = speculative(args.vocab, args)
    import transformers

    out = {
        "params": model.num_params(),
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "threads": args.threads,
        "repeat": args.repeat,
        "max_abs_logit_diff": diff,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "greedy": rows,
        "speculative": spec,
    }
    print(f"{model.num_params() / 1e6:.1f}M params, prompt {args.prompt}, {args.new} new tokens, "
          f"{args.threads} threads, median of {args.repeat}; max |logit diff| {diff:.1e}")  # fmt: skip
    print(f"{'batch':>5} | {'codefoundry tok/s':>17} | {'transformers tok/s':>18} | {'ratio':>5}")
    for r in rows:
        ours, theirs = r["codefoundry_tokens_per_s"], r["transformers_tokens_per_s"]
        print(f"{r['batch']:>5} | {ours:>17} | {theirs:>18} | {r['ratio']:>5}")
    print(f"speculative (mtp_depth=1, batch 1): {spec['speculative_tokens_per_s']} tok/s vs plain "
          f"{spec['plain_tokens_per_s']} ({spec['ratio']}x), acceptance {spec['acceptance']}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
