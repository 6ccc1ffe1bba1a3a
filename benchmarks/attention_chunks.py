"""Causal attention, forward and backward, in query chunks (`codefoundry.models.cpu_ops`) and through the C
kernel (`attention.c`, `cpu_ops.NativeCausal`) vs one PyTorch call.

The shapes of the `10m` model's attention (8 query heads, 4 key/value heads, head dim 32) at a constant
4096 tokens a batch (batch = 4096 / length), on CPU. For each length, one causal
`scaled_dot_product_attention` call and `ChunkedCausal` at each chunk size run forward and backward,
alternating, the order reversed every round; reported: the median time of each and its speedup over the
single call. The window in which `causal_attention` takes chunks (`MIN_TOKENS..MAX_TOKENS`) and `CHUNK`
come from this table, and so does `NATIVE_MAX_TOKENS`, up to which the C kernel (where it builds) comes
first.

    python benchmarks/attention_chunks.py --lengths 256,384,512,768,1024,2048 --chunks 32,64,128,256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from codefoundry.models import native
from codefoundry.models.cpu_ops import ChunkedCausal, NativeCausal


def measure(T: int, args: argparse.Namespace) -> dict:
    """Median forward + backward time of one causal call and of each chunk size, at length T."""
    B = max(1, args.tokens // T)
    gen = torch.Generator().manual_seed(T)
    q, k, v = (
        torch.randn(B, h, T, args.head_dim, generator=gen, requires_grad=True)
        for h in (args.heads, args.kv_heads, args.kv_heads)
    )
    grad = torch.randn(B, args.heads, T, args.head_dim, generator=gen)
    arms = {"one call": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)}
    for c in (int(x) for x in args.chunks.split(",")):
        if 2 * c <= T:
            arms[f"chunks of {c}"] = lambda c=c: ChunkedCausal.apply(q, k, v, c)
    if native.library() is not None and args.head_dim % 16 == 0:
        arms["C kernel"] = lambda: NativeCausal.apply(q, k, v)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds + 1):
        for name, run in list(arms.items())[:: 1 if r % 2 == 0 else -1]:
            q.grad = k.grad = v.grad = None
            t0 = time.perf_counter()
            run().backward(grad)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["one call"])
    row: dict = {"length": T, "batch": B}
    for name, ts in times.items():
        row[name] = {
            "ms": round(1e3 * statistics.median(ts), 1),
            "speedup": round(base / statistics.median(ts), 2),
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="256,384,512,768,1024,2048")
    ap.add_argument("--chunks", default="32,64,128,256")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens a batch (batch = tokens / length)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = []
    for T in (int(x) for x in args.lengths.split(",")):
        row = measure(T, args)
        table.append(row)
        cells = "  ".join(
            f"{n}: {c['ms']} ms ({c['speedup']}x)" for n, c in row.items() if isinstance(c, dict)
        )
        print(f"length {T} (batch {row['batch']}): {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
