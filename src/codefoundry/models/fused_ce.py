"""Cross-entropy through the output head without materialising the logits.

`linear_cross_entropy(h, weight, targets)` equals `F.cross_entropy(h @ weight.T, targets,
ignore_index=-100)` (mean over the targets that are not ignored) and has the same gradients. It walks the
rows in chunks: each chunk's logits are computed, turned into the loss and, in the same pass, into the
gradient of the loss with respect to those logits (softmax minus the one-hot target, over the number of
counted targets), which is multiplied straight into the gradients of `h` and `weight`. Backward only
scales those two by the incoming gradient.

Why: with a 8k-32k vocabulary the logits of a batch are the largest tensor of a training step
(4096 tokens x 8192 = 134 MB in fp32). The unfused path writes them, reads them for log-softmax, writes
that, zero-fills a tensor of the same size for the NLL gradient and reads both again for the
log-softmax backward: on a 2-core CPU that is ~16% of a 10M-model step. On CPU a chunk is ~8 MB of
logits and stays in cache; on accelerators chunks are up to 256 MB, so a step launches few kernels; under
torch.compile (which unrolls the loop) there are at most 16. The cost is the gradient work done in
forward, so it is used only when a gradient will be taken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
CHUNK_ELEMENTS = 1 << 21  # logits per chunk on CPU (8 MB in fp32: stays in cache)
ACCELERATOR_CHUNK_ELEMENTS = 1 << 26  # elsewhere: few, large chunks (256 MB in fp32), for few kernels
MAX_COMPILED_CHUNKS = 16  # torch.compile unrolls the loop: more rows per chunk rather than more chunks
CPU_VOCAB_SLICES = 4  # blocks of the vocabulary per chunk on the CPU in fp32 (see _in_place)


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of `h @ weight.T` ((N, D) x (V, D)) against `targets` ((N,), -100 = ignore), in fp32:
    the mean over the counted targets, or with reduction="sum" their sum.

    Without a gradient to take, the plain path (logits, then `F.cross_entropy`) is used."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'mean' or 'sum', not {reduction!r}")
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        return F.cross_entropy((h @ weight.t()).float(), targets, ignore_index=IGNORE, reduction=reduction)
    return _LinearCrossEntropy.apply(h, weight, targets, reduction == "mean")


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mean: bool
    ) -> torch.Tensor:
        n, vocab = h.shape[0], weight.shape[0]
        device = h.device.type
        # Under autocast the matmuls run in its dtype, as they would unfused; the softmax runs in fp32.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        counted = targets != IGNORE
        # F.cross_entropy refuses such targets; clamping them to 0 below would count them as token 0.
        # An asynchronous assert: no host-device sync on accelerators, and it survives torch.compile.
        bad = (counted & (targets < 0)) | (targets >= vocab)
        torch._assert_async(~bad.any(), f"linear_cross_entropy: a target is neither -100 nor in [0, {vocab})")
        # Each counted row's weight in the result: 1/n for the mean (with nothing counted the loss is
        # 0/0 = nan, as F.cross_entropy gives), 1 for the sum.
        scale = 1.0 / counted.sum().to(torch.float32) if mean else torch.ones((), device=h.device)
        per_chunk = CHUNK_ELEMENTS if device == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
        rows = max(1, per_chunk // vocab)
        if torch.compiler.is_compiling():
            rows = max(rows, -(-n // MAX_COMPILED_CHUNKS))
            total, grad_h, grad_w = _traced(h, weight.to(dtype), targets, counted, scale, rows)
        else:
            with torch.autocast(device, enabled=False):
                total, grad_h, grad_w = _in_place(h, weight.to(dtype), targets, counted, scale, rows)
        # total is already the result: each row's loss carried its weight.
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


def _rows(targets, counted, scale, start, end):
    """A chunk's targets made safe to gather (ignored ones as 0, (rows, 1)) and each row's weight in the
    result (1/n, 1 or 0; (rows, 1))."""
    safe = targets[start:end].clamp_min(0).unsqueeze(1)
    return safe, (counted[start:end].to(torch.float32) * scale).unsqueeze(1)


def _in_place(h, w, targets, counted, scale, rows):
    """(loss, d loss / d h, d loss / d weight in fp32), chunk by chunk, updating buffers in place: the
    eager path, which keeps one chunk of logits alive and writes nothing twice.

    A chunk's logits are laid out as `slices` blocks of the vocabulary, (slices, rows, V / slices), each
    the product of the chunk with one block of the head's rows (one `torch.bmm`); the softmax reduces over
    the blocks and the columns. On the CPU in fp32, four blocks (a 2 MB block of the head and of the
    logits at a time) take 424 vs 509 ms for the 10m model's loss and its gradients over 4096 rows (the
    head's products 157 vs 125 GFLOP/s); elsewhere one block."""
    dtype = w.dtype
    vocab, dim = w.shape
    p = _slices(h.device, dtype, vocab)
    n = vocab // p
    grad_h = torch.empty_like(h)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    blocks_w = grad_w.view(p, n, dim)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    w_blocks = w.view(p, n, dim)
    # (p, D, n): one copy, so no chunk's product repacks a transposed operand
    wt = w_blocks.transpose(1, 2).contiguous()
    for start in range(0, h.shape[0], rows):
        end = min(start + rows, h.shape[0])
        r = end - start
        hc = h[start:end].to(dtype)
        safe, weight_of_row = _rows(targets, counted, scale, start, end)
        # Each row's target as an offset into the chunk's (p, r, n) logits.
        at = ((safe // n) * r + torch.arange(r, device=h.device).unsqueeze(1)) * n + safe % n
        at = at.view(-1)
        logits = torch.bmm(hc.expand(p, -1, -1), wt).float()  # (p, r, n)
        picked = logits.view(-1).gather(0, at).unsqueeze(1)  # (r, 1)
        top = logits.amax(dim=(0, 2)).unsqueeze(1)
        exp = logits.sub_(top).exp_()  # in place: the logits are not needed again
        sums = exp.sum(dim=(0, 2)).unsqueeze(1)
        total += ((top + sums.log() - picked) * weight_of_row).sum()
        # d loss / d logits = (softmax - onehot) * the row's weight.
        grad = exp.mul_(weight_of_row / sums)
        grad.view(-1).scatter_add_(0, at, -weight_of_row.view(-1))
        grad = grad.to(dtype)
        if p == 1:
            grad_h[start:end] = grad[0] @ w
        else:
            grad_h[start:end] = torch.bmm(grad, w_blocks).sum(dim=0)
        if dtype == torch.float32:
            blocks_w.baddbmm_(grad.transpose(1, 2), hc.expand(p, -1, -1))
        else:
            blocks_w += torch.bmm(grad.transpose(1, 2), hc.expand(p, -1, -1)).float()
    return total, grad_h, grad_w


def _slices(device: torch.device, dtype: torch.dtype, vocab: int) -> int:
    """The vocabulary blocks of `_in_place`'s chunks: CPU_VOCAB_SLICES on the CPU in fp32 where they divide
    the vocabulary, else 1."""
    if device.type == "cpu" and dtype == torch.float32 and vocab % CPU_VOCAB_SLICES == 0:
        return CPU_VOCAB_SLICES
    return 1


def _traced(h, w, targets, counted, scale, rows):
    """What `_in_place` computes, without in-place updates and without an autocast region: the path that
    torch.compile traces (and fuses each chunk's softmax and gradient into a few kernels). Traced in
    place, torch 2.11's compile on a CUDA device returned zero gradients."""
    dtype = w.dtype
    total, grads_h, grad_w = None, [], None
    for start in range(0, h.shape[0], rows):
        end = start + rows
        hc = h[start:end].to(dtype)
        safe, weight_of_row = _rows(targets, counted, scale, start, end)
        logits = torch.mm(hc, w.t()).float()
        top = logits.amax(dim=1, keepdim=True)
        exp = (logits - top).exp()
        sums = exp.sum(dim=1, keepdim=True)
        loss = ((top + sums.log() - logits.gather(1, safe)) * weight_of_row).sum()
        grad = (exp * (weight_of_row / sums)).scatter_add(1, safe, -weight_of_row).to(dtype)
        grads_h.append(torch.mm(grad, w))
        part = torch.mm(grad.t(), hc).float()
        total = loss if total is None else total + loss
        grad_w = part if grad_w is None else grad_w + part
    return total, torch.cat(grads_h).to(h.dtype), grad_w
