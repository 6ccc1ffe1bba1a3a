"""The decoding step's products alone: `small_gemm`'s kernel against the PyTorch layouts `decode_weights`
uses without it (`x @ W_t`, oneDNN's prepacked weights, column slices through one `torch.bmm`), for the
shapes of one model's matrices at decoding row counts.

Each timing cycles through `--layers` copies of a matrix, as a step cycles through its layers' weights (10
copies of the 10m model's are ~38 MB, past this VM's 32 MB L3 cache), and reports microseconds per
product (median of `--repeat` sweeps) and the kernel's speed-up over the fastest PyTorch layout.

    python benchmarks/small_products.py --rows 1,4,16,64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from codefoundry.models import decode_weights, small_gemm
from codefoundry.models.config import config_for_size


def shapes(size: str, vocab: int) -> dict[str, tuple[int, int]]:
    cfg = config_for_size(size, vocab)
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    return {"qkv": (qkv, cfg.dim), "out": (cfg.dim, cfg.n_heads * cfg.head_dim),
            "gate/up": (2 * cfg.ffn_dim, cfg.dim), "down": (cfg.dim, cfg.ffn_dim), "head": (vocab, cfg.dim)}  # fmt: skip


def layouts(w: torch.Tensor, rows: int) -> dict[str, object]:
    threads = torch.get_num_threads()
    made = {"x @ W_t": decode_weights._Matrix(w.t().contiguous(), None)}
    if decode_weights._packing_works():
        made["packed"] = decode_weights._Packed(torch.ops.mkldnn._reorder_linear_weight(w, rows), None)
    split = decode_weights._split("packed", w, decode_weights.SPLIT_SLICES_PER_THREAD * threads)
    if split is not None:
        made["split"] = decode_weights._Split(split, None)
    if small_gemm.library() is not None and w.shape[0] % small_gemm.PANEL == 0:
        made["kernel"] = decode_weights._Panels(small_gemm.panels(w), None)
    return made


def sweep(products: list, x: torch.Tensor) -> float:
    t = time.perf_counter()
    for product in products:
        product(x)
    return (time.perf_counter() - t) / len(products)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="10m")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if small_gemm.library() is None:
        print(f"the kernel is unavailable here: {small_gemm.why_not()}")
    print(f"{args.size}, {args.threads} threads, {args.layers} copies cycled; us per product (median)")
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n, k) in shapes(args.size, args.vocab).items():
            copies = [torch.randn(n, k) * 0.05 for _ in range(args.layers)]
            arms: dict[str, list] = {}
            for w in copies:
                for label, product in layouts(w, rows).items():
                    arms.setdefault(label, []).append(product)
            x = torch.randn(rows, k)
            for products in arms.values():
                sweep(products, x)  # warm up
            times = {label: [] for label in arms}
            for _ in range(args.repeat):
                for label, products in arms.items():
                    times[label].append(sweep(products, x))
            med = {label: statistics.median(v) * 1e6 for label, v in times.items()}
            cells = "  ".join(f"{label} {us:7.1f}" for label, us in med.items())
            best = min(us for label, us in med.items() if label != "kernel")
            gain = f"  kernel {best / med['kernel']:.2f}x the best other" if "kernel" in med else ""
            print(f"rows {rows:3d} {name:8s} {n:5d}x{k:<4d} {cells}{gain}")


if __name__ == "__main__":
    main()
