"""Training throughput: codefoundry's decoder vs transformers' LlamaForCausalLM, same config, batch, optimizer.

Both models get the same shape (width, depth, heads, GQA, SwiGLU width, vocabulary, tied embeddings), the
same initial weights (ours copied into Llama's layout), the same batches and the same AdamW settings. Each
timed round runs `--steps` full training steps (forward, loss, backward, clip, optimizer step) of one
model, then the other, alternating `--repeat` times (the order reversed every round) so drift on the
machine hits both. Reported: median training tokens/s of each and their ratio. Ours computes its loss as
`codefoundry pretrain` does, through the fused output head + cross-entropy; `--unfused` adds a third arm,
ours with the logits materialised as transformers does, which isolates what the fused loss is worth. `--interleave` alternates single steps
instead (steps x repeat pairs, the order swapped every pair) and reports the median of the per-pair
ratios, so that the VM's drift, which moves a round of several steps by 20%, hits both sides alike.
`--dtype bf16` runs both sides' steps under CPU autocast, as `codefoundry pretrain` does by default on CPUs
with bf16 products (AVX512-BF16, AMX).

    python benchmarks/train_throughput.py --size 10m --batch 8 --seq-len 512 --steps 5 --repeat 5
    python benchmarks/train_throughput.py --size 10m --batch 8 --seq-len 512 --steps 4 --repeat 3 --interleave
    python benchmarks/train_throughput.py --size 10m --batch 8 --seq-len 512 --steps 4 --repeat 3 --interleave \
        --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from _provenance import provenance
from codefoundry.models.config import config_for_size
from codefoundry.models.hf import to_transformers
from codefoundry.models.transformer import Transformer


def llama_like(model: Transformer):
    """A LlamaForCausalLM with `model`'s config and weights, through `codefoundry.models.hf`; no KV cache
    is built during training (transformers would otherwise fill one on every forward)."""
    hf = to_transformers(model)
    hf.config.use_cache = False
    return hf


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), foreach=True)


def step_ours(model, opt, ids, *, logits: bool = False):
    # logits=False: the loss through the fused head + cross-entropy (codefoundry.models.fused_ce), as
    # `codefoundry pretrain` computes it; logits=True materialises the logits first, as transformers does.
    loss = model(ids[:, :-1], ids[:, 1:], logits=logits).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def step_hf(model, opt, ids):
    # labels = inputs: transformers shifts them inside its loss
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def step_ours_unfused(model, opt, ids):
    return step_ours(model, opt, ids, logits=True)


def under_autocast(step, dtype: torch.dtype | None):
    """`step` run under CPU autocast to `dtype` (None: as it is), the way `codefoundry pretrain` runs its
    steps with `--dtype bf16` (the default on CPUs with bf16 products)."""
    if dtype is None:
        return step

    def run(model, opt, ids):
        with torch.autocast("cpu", dtype=dtype):
            return step(model, opt, ids)

    return run


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
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile both models (compile time not timed)"
    )
    ap.add_argument(
        "--unfused", action="store_true", help="also time ours with the logits materialised (no fused loss)"
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="alternate single steps (steps x repeat pairs) instead of rounds of --steps; median pair ratio",
    )
    ap.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: both sides under CPU autocast"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    arm_ours, arm_hf, arm_unfused = (under_autocast(f, amp) for f in (step_ours, step_hf, step_ours_unfused))
    if args.interleave and args.unfused:
        ap.error("--unfused times rounds of steps; it is not available with --interleave")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = Transformer(config_for_size(args.size, args.vocab, max_seq_len=args.seq_len + 1)).train()
    hf = llama_like(ours).train()
    opt_ours, opt_hf = optimizer(ours), optimizer(hf)
    run_ours, run_hf = (torch.compile(ours), torch.compile(hf)) if args.compile else (ours, hf)
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

    timed(arm_ours, run_ours, opt_ours, batches[:2])  # warm-up (allocator, kernels, compilation)
    if args.unfused:
        timed(arm_unfused, run_ours, opt_ours, batches[:2])
    timed(arm_hf, run_hf, opt_hf, hf_batches[:2])
    tokens = args.batch * args.seq_len * args.steps
    ours_tps, hf_tps, unfused_tps, pair_ratios = [], [], [], []
    if args.interleave:
        # One step of each per pair, the order swapped every pair: drift on the VM hits both sides alike.
        step_tokens = args.batch * args.seq_len
        for r in range(args.repeat * args.steps):
            i = r % len(batches)
            arms = [
                ("ours", arm_ours, run_ours, opt_ours, batches[i]),
                ("hf", arm_hf, run_hf, opt_hf, hf_batches[i]),
            ]
            took = {}
            for name, step, model, opt, ids in arms if r % 2 == 0 else arms[::-1]:
                took[name] = timed(step, model, opt, [ids])
            ours_tps.append(step_tokens / took["ours"])
            hf_tps.append(step_tokens / took["hf"])
            pair_ratios.append(took["hf"] / took["ours"])
        print("pair ratios:", " ".join(f"{x:.2f}" for x in pair_ratios))
        print(f"median pair ratio {statistics.median(pair_ratios):.2f}x")
    rounds = [(ours_tps, arm_ours, run_ours, opt_ours, batches), (hf_tps, arm_hf, run_hf, opt_hf, hf_batches)]
    if args.unfused:
        rounds.append((unfused_tps, arm_unfused, run_ours, opt_ours, batches))
    for r in range(0 if args.interleave else args.repeat):
        # the order reversed every round, so that no arm always runs first (or right after another)
        for into, step, model, opt, data in rounds if r % 2 == 0 else rounds[::-1]:
            into.append(tokens / timed(step, model, opt, data))
        line = f"round {r + 1}: codefoundry {ours_tps[-1]:8.0f} tok/s   transformers {hf_tps[-1]:8.0f} tok/s"
        if args.unfused:
            line += f"   codefoundry unfused {unfused_tps[-1]:8.0f} tok/s"
        print(line)
    mo, mh = statistics.median(ours_tps), statistics.median(hf_tps)
    print(f"median: codefoundry {mo:.0f} tok/s, transformers {mh:.0f} tok/s, ratio {mo / mh:.2f}x")
    if unfused_tps:
        mu = statistics.median(unfused_tps)
        print(f"unfused: {mu:.0f} tok/s, ratio {mu / mh:.2f}x; the fused loss gains {mo / mu:.2f}x")
    result = {
        "benchmark": "train_throughput",
        "size": args.size,
        "params": ours.num_params(),
        "vocab": args.vocab,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "compile": args.compile,
        "dtype": args.dtype,
        "codefoundry_tokens_per_s": ours_tps,
        "transformers_tokens_per_s": hf_tps,
        # the ratio of the two medians of tokens/s; with --interleave the headline is pair_ratio_median
        "ratio_median": mo / mh,
        "pair_ratio_median": statistics.median(pair_ratios) if pair_ratios else None,
        "tokens_per_step": args.batch * args.seq_len,
        "hf_attn_implementation": getattr(hf.config, "_attn_implementation", None),
        "optimizer": "AdamW lr 1e-3 betas (0.9, 0.95) wd 0.1 on matrices, foreach, clip 1.0 (both)",
        "codefoundry_unfused_tokens_per_s": unfused_tps,
        "interleaved": args.interleave,
        "pair_ratios": pair_ratios,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "machine": platform.processor() or platform.machine(),
        "provenance": provenance("transformers"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
