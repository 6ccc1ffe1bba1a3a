"""Training throughput: codefoundry's decoder vs transformers' LlamaForCausalLM, same config, batch, optimizer.

Both models get the same shape (width, depth, heads, GQA, SwiGLU width, vocabulary, tied embeddings), the
same initial weights (ours copied into Llama's layout), the same batches and the same AdamW settings. Each
timed round runs `--steps` full training steps (forward, loss, backward, clip, optimizer step) of one
model, then the other, alternating `--repeat` times so drift on the machine hits both. Reported: median
training tokens/s of each and their ratio.

    python benchmarks/train_throughput.py --size 10m --batch 8 --seq-len 512 --steps 5 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from codefoundry.models.config import config_for_size
from codefoundry.models.transformer import Transformer


def llama_like(model: Transformer):
    """A LlamaForCausalLM with `model`'s config and weights (fused projections split back apart)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
            tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
            attn_implementation="sdpa", use_cache=False,
        )
    )  # fmt: skip
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(model.embed.weight)
        hf.model.norm.weight.copy_(model.norm.weight)
        for ours, theirs in zip(model.layers, hf.model.layers, strict=True):
            wq, wk, wv = ours.attn.qkv.weight.split([q, kv, kv])
            theirs.self_attn.q_proj.weight.copy_(wq)
            theirs.self_attn.k_proj.weight.copy_(wk)
            theirs.self_attn.v_proj.weight.copy_(wv)
            theirs.self_attn.o_proj.weight.copy_(ours.attn.out.weight)
            gate, up = ours.mlp.gate_up.weight.split(ours.mlp.hidden)
            theirs.mlp.gate_proj.weight.copy_(gate)
            theirs.mlp.up_proj.weight.copy_(up)
            theirs.mlp.down_proj.weight.copy_(ours.mlp.down.weight)
            theirs.input_layernorm.weight.copy_(ours.attn_norm.weight)
            theirs.post_attention_layernorm.weight.copy_(ours.mlp_norm.weight)
        if not cfg.tie_embeddings:
            hf.lm_head.weight.copy_(model.lm_head.weight)
    return hf


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), foreach=True)


def step_ours(model, opt, ids):
    loss = model(ids[:, :-1], ids[:, 1:], logits=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def step_hf(model, opt, ids):
    # labels = inputs: transformers shifts them inside its loss
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def timed(step, model, opt, batches) -> float:
    t0 = time.perf_counter()
    for ids in batches:
        step(model, opt, ids)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="10m")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = Transformer(config_for_size(args.size, args.vocab, max_seq_len=args.seq_len + 1)).train()
    hf = llama_like(ours).train()
    opt_ours, opt_hf = optimizer(ours), optimizer(hf)
    gen = torch.Generator().manual_seed(1)
    # Both forward T = seq_len tokens per row: ours gets inputs/targets of T, transformers gets the T
    # inputs as labels too (it predicts T-1 of them; the one-token difference in the loss is noise).
    batches = [
        torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen) for _ in range(args.steps)
    ]
    hf_batches = [b[:, :-1] for b in batches]  # T tokens in, labels shifted inside transformers

    # Same starting loss on the same tokens: the two are the same network.
    with torch.no_grad():
        a = float(ours(batches[0][:, :-1], batches[0][:, 1:]).loss)
        b = float(hf(input_ids=batches[0], labels=batches[0]).loss)
    print(f"initial loss: codefoundry {a:.5f}  transformers {b:.5f}")

    timed(step_ours, ours, opt_ours, batches[:1])  # warm-up (allocator, kernels)
    timed(step_hf, hf, opt_hf, hf_batches[:1])
    tokens = args.batch * args.seq_len * args.steps
    ours_tps, hf_tps = [], []
    for r in range(args.repeat):
        ours_tps.append(tokens / timed(step_ours, ours, opt_ours, batches))
        hf_tps.append(tokens / timed(step_hf, hf, opt_hf, hf_batches))
        print(f"round {r + 1}: codefoundry {ours_tps[-1]:8.0f} tok/s   transformers {hf_tps[-1]:8.0f} tok/s")
    mo, mh = statistics.median(ours_tps), statistics.median(hf_tps)
    print(f"median: codefoundry {mo:.0f} tok/s, transformers {mh:.0f} tok/s, ratio {mo / mh:.2f}x")
    result = {
        "benchmark": "train_throughput",
        "size": args.size,
        "params": ours.num_params(),
        "vocab": args.vocab,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "codefoundry_tokens_per_s": ours_tps,
        "transformers_tokens_per_s": hf_tps,
        "ratio_median": mo / mh,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
