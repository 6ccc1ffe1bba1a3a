"""Greedy generation speed: `codefoundry.models.generate` vs transformers' `LlamaForCausalLM.generate` on
the same weights, same prompts, same thread count, in the same run; plus self-speculative decoding (MTP
drafts) vs plain greedy on a model with one MTP module.

The ~10M-parameter model (`config_for_size("10m", vocab)`, random weights) is exported to a Llama with
`codefoundry.models.hf.to_transformers`, and the two models' logits must agree to 1e-4 before anything
is timed. Each measurement is prompt (`--prompt` random tokens) + `--new` greedy
tokens with no stop token, counted as new tokens per second of the whole call (prefill included); the
two implementations alternate `--repeat` times (the order swapped every time) and medians are reported.
Every call must return exactly `--new` tokens a row on both sides (checked): an early stop on either
side would make its tokens/s count work it did not do.

    python benchmarks/generate_throughput.py --repeat 5 --json benchmarks/results/generate_throughput.json

`--temperature T --top-p P` times sampling instead (the two draw different tokens, so only the speed is
compared); `--device cuda --size 100m` runs on a GPU (synchronised before each clock reading).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from _provenance import provenance
from codefoundry.models.config import config_for_size
from codefoundry.models.generate import generate, speculative_decode
from codefoundry.models.hf import to_transformers
from codefoundry.models.transformer import Transformer


def to_llama(model: Transformer):
    """The same weights as a transformers `LlamaForCausalLM`, through `codefoundry.models.hf`."""
    hf = to_transformers(model)
    hf.generation_config.eos_token_id = None  # never stop early: every call makes exactly --new tokens
    return hf


def check_logits(model: Transformer, hf, vocab: int) -> float:
    ids = torch.randint(0, vocab, (2, 48), device=model.embed.weight.device)
    with torch.inference_mode():
        diff = (model(ids).logits - hf(ids).logits).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"the exported Llama disagrees with the model: max |logit diff| = {diff:.2e}")
    return diff


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_ours(model: Transformer, prompts: torch.Tensor, new: int, args) -> tuple[float, list[list[int]]]:
    t = _clock(prompts.device)
    out = generate(model, prompts.tolist(), max_new_tokens=new, temperature=args.temperature, top_p=args.top_p,
                   seed=0)  # fmt: skip
    return _clock(prompts.device) - t, out


def time_hf(hf, prompts: torch.Tensor, new: int, args) -> tuple[float, list[list[int]]]:
    sampling = {"do_sample": False}
    if args.temperature > 0:
        sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p, "top_k": 0}
    t = _clock(prompts.device)
    with torch.inference_mode():
        out = hf.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
            min_new_tokens=new, pad_token_id=0, **sampling,
        )  # fmt: skip
    return _clock(prompts.device) - t, out[:, prompts.shape[1] :].tolist()


def new_tokens(rows: list[list[int]], batch: int, new: int, who: str) -> int:
    """The tokens `rows` hold, after checking that each of the `batch` rows made exactly `new`."""
    lengths = sorted({len(r) for r in rows})
    if len(rows) != batch or lengths != [new]:
        raise SystemExit(f"{who} returned {len(rows)} rows of {lengths} new tokens, not {batch} of {new}")
    return batch * new


def compare(model: Transformer, hf, batch: int, args) -> dict:
    prompts = torch.randint(0, model.cfg.vocab_size, (batch, args.prompt), device=model.embed.weight.device)
    time_ours(model, prompts, 8, args), time_hf(hf, prompts, 8, args)  # warm up both
    ours, theirs = [], []
    for r in range(args.repeat):
        for side in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
            if side == "ours":
                t, ours_out = time_ours(model, prompts, args.new, args)
                ours.append(new_tokens(ours_out, batch, args.new, "codefoundry") / t)
            else:
                t, hf_out = time_hf(hf, prompts, args.new, args)
                theirs.append(new_tokens(hf_out, batch, args.new, "transformers") / t)
    same = sum(a == b for a, b in zip(ours_out, hf_out, strict=True))
    if args.temperature > 0:
        same = "n/a (sampled)"
    return {
        "batch": batch,
        "codefoundry_tokens_per_s": round(statistics.median(ours), 1),
        "transformers_tokens_per_s": round(statistics.median(theirs), 1),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
        "all_codefoundry": [round(x, 1) for x in ours],
        "all_transformers": [round(x, 1) for x in theirs],
        "rows_with_identical_tokens": same if isinstance(same, str) else f"{same}/{batch}",
    }


def speculative(vocab: int, args) -> dict:
    torch.manual_seed(1)
    model = Transformer(config_for_size(args.size, vocab, mtp_depth=1)).to(args.device).eval()
    prompt = torch.randint(0, vocab, (args.prompt,)).tolist()
    device = torch.device(args.device)
    generate(model, [prompt], max_new_tokens=8)  # warm up both
    speculative_decode(model, prompt, max_new_tokens=8)
    plain_times, spec_times, results, plain = [], [], [], []
    for r in range(args.repeat):
        for side in ("plain", "spec") if r % 2 == 0 else ("spec", "plain"):
            t = _clock(device)
            if side == "plain":
                plain = generate(model, [prompt], max_new_tokens=args.new)[0]
                plain_times.append(_clock(device) - t)
            else:
                results.append(speculative_decode(model, prompt, max_new_tokens=args.new))
                spec_times.append(_clock(device) - t)
        if results[-1].tokens != plain or len(plain) != args.new:
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
    ap.add_argument("--size", default="10m", help="a named size of codefoundry.models.config.SIZES")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both models fp32)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default comparison)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--no-speculative", action="store_true", help="skip the MTP self-speculation timing")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(config_for_size(args.size, args.vocab)).eval()
    hf = to_llama(model).to(args.device)
    model.to(args.device)
    diff = check_logits(model, hf, args.vocab)
    rows = [compare(model, hf, int(b), args) for b in args.batches.split(",")]
    spec = None if args.no_speculative or args.temperature > 0 else speculative(args.vocab, args)
    import transformers

    out = {
        "params": model.num_params(),
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "threads": args.threads,
        "size": args.size,
        "device": args.device,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "repeat": args.repeat,
        "max_abs_logit_diff": diff,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_attn_implementation": getattr(hf.config, "_attn_implementation", None),
        "hf_cache": "transformers' default (DynamicCache), eager, no torch.compile on either side",
        "provenance": provenance("transformers"),
        "sampled" if args.temperature > 0 else "greedy": rows,
        "speculative": spec,
    }
    print(f"{model.num_params() / 1e6:.1f}M params, prompt {args.prompt}, {args.new} new tokens, "
          f"{args.threads} threads, median of {args.repeat}; max |logit diff| {diff:.1e}")  # fmt: skip
    print(f"{'batch':>5} | {'codefoundry tok/s':>17} | {'transformers tok/s':>18} | {'ratio':>5}")
    for r in rows:
        ours, theirs = r["codefoundry_tokens_per_s"], r["transformers_tokens_per_s"]
        print(f"{r['batch']:>5} | {ours:>17} | {theirs:>18} | {r['ratio']:>5}")
    if spec is not None:
        print(f"speculative (mtp_depth=1, batch 1): {spec['speculative_tokens_per_s']} tok/s vs plain "
              f"{spec['plain_tokens_per_s']} ({spec['ratio']}x), acceptance {spec['acceptance']}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
