"""Batched generation whose rows end at different lengths, as completions with stop strings and RL rollouts
do: codefoundry's `generate`, which drops finished rows from the batch (`COMPACT_BELOW`), the same with
dropping turned off, and transformers' `generate` on the same weights, in the same run.

The `10m` model with random weights and its `LlamaForCausalLM` twin (`generate_throughput.to_llama`;
logits checked equal first). Each of the `--batch` rows gets the same `--prompt` random tokens' length
and must end after its own number of new tokens: the lengths are spread evenly from new/batch to `--new`
and shuffled over the rows (seeded). Ours ends a row through its `on_token` callback, transformers through
a `StoppingCriteria` that marks rows done (its batch runs on until the longest row ends). Greedy; the
tokens each row keeps must agree between the three. Reported: tokens kept per second (the sum of the
row lengths over the call's time), medians of `--repeat` rounds with the order rotated every round.

    python benchmarks/generate_ragged.py --batch 16 --new 256 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from codefoundry.models import generate as cf_generate
from codefoundry.models.config import config_for_size
from codefoundry.models.transformer import Transformer
from generate_throughput import check_logits, to_llama


def row_lengths(batch: int, new: int, seed: int) -> list[int]:
    """`batch` lengths spread evenly over (0, new], the last one `new`, in a seeded random order."""
    lengths = [max(1, round(new * (i + 1) / batch)) for i in range(batch)]
    random.Random(seed).shuffle(lengths)
    return lengths


def _ending_at(lengths: list[int]):
    counts = [0] * len(lengths)

    def on_token(row: int, token: int) -> bool:
        counts[row] += 1
        return counts[row] >= lengths[row]

    return on_token


class _RowsDone(StoppingCriteria):
    """Marks row r done once it has lengths[r] new tokens."""

    def __init__(self, prompt_len: int, lengths: list[int]) -> None:
        self.prompt_len, self.lengths = prompt_len, torch.tensor(lengths)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_len) >= self.lengths.to(input_ids.device)


def run_ours(
    model, prompts: torch.Tensor, lengths: list[int], compact: float
) -> tuple[float, list[list[int]]]:
    saved, cf_generate.COMPACT_BELOW = cf_generate.COMPACT_BELOW, compact
    try:
        t = time.perf_counter()
        out = cf_generate.generate(
            model, prompts.tolist(), max_new_tokens=max(lengths), on_token=_ending_at(lengths)
        )
        return time.perf_counter() - t, out
    finally:
        cf_generate.COMPACT_BELOW = saved


def run_hf(hf, prompts: torch.Tensor, lengths: list[int]) -> tuple[float, list[list[int]]]:
    stop = StoppingCriteriaList([_RowsDone(prompts.shape[1], lengths)])
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=max(lengths),
            do_sample=False, pad_token_id=0, stopping_criteria=stop,
        )  # fmt: skip
    elapsed = time.perf_counter() - t
    new = out[:, prompts.shape[1] :].tolist()
    return elapsed, [row[:n] for row, n in zip(new, lengths, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="10m")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=256, help="the longest row's new tokens")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Transformer(config_for_size(args.size, args.vocab)).eval()
    hf = to_llama(model)
    diff = check_logits(model, hf, args.vocab)
    prompts = torch.randint(0, args.vocab, (args.batch, args.prompt))
    lengths = row_lengths(args.batch, args.new, args.seed)
    kept = sum(lengths)
    arms = {
        "codefoundry": lambda: run_ours(model, prompts, lengths, cf_generate.COMPACT_BELOW),
        "codefoundry_no_drop": lambda: run_ours(model, prompts, lengths, 0.0),
        "transformers": lambda: run_hf(hf, prompts, [min(n, 8) for n in lengths]),
    }
    run_ours(model, prompts, [min(n, 8) for n in lengths], 0.75)  # warm-up: weight layouts, allocator
    arms["transformers"]()
    arms["transformers"] = lambda: run_hf(hf, prompts, lengths)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    outputs: dict[str, list[list[int]]] = {}
    names = list(arms)
    for r in range(args.repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            elapsed, outputs[name] = arms[name]()
            rates[name].append(kept / elapsed)
    agree = {name: sum(a == b for a, b in zip(out, outputs["codefoundry"], strict=True))
             for name, out in outputs.items()}  # fmt: skip
    med = {name: statistics.median(v) for name, v in rates.items()}
    result = {
        "params": model.num_params(), "batch": args.batch, "prompt_tokens": args.prompt, "new_max": args.new,
        "row_lengths": lengths, "tokens_kept": kept, "threads": args.threads, "repeat": args.repeat,
        "max_abs_logit_diff": diff, "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "all_tokens_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_vs_transformers": round(med["codefoundry"] / med["transformers"], 2),
        "ratio_dropping_vs_not": round(med["codefoundry"] / med["codefoundry_no_drop"], 2),
        "rows_agreeing_with_codefoundry": {k: f"{v}/{args.batch}" for k, v in agree.items()},
    }  # fmt: skip
    print(f"{model.num_params() / 1e6:.1f}M params, batch {args.batch}, prompt {args.prompt}, rows ending after "
          f"{min(lengths)}..{max(lengths)} new tokens ({kept} kept), {args.threads} threads, median of "
          f"{args.repeat}; max |logit diff| {diff:.1e}")  # fmt: skip
    for name, v in med.items():
        print(f"{name:>20}: {v:7.1f} tok/s   rows agreeing {agree[name]}/{args.batch}")
    print(f"codefoundry vs transformers {result['ratio_vs_transformers']}x; "
          f"dropping finished rows vs not {result['ratio_dropping_vs_not']}x")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
