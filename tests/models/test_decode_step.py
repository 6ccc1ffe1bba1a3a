"""The decoding loop's own machinery: rows that end leave the batch (`KVCache.keep_rows`) without changing
any row's tokens; the fixed-buffer step (`StaticStep`) against the eager one (`Step`), the same logits from
the same cache over the weight layouts of `decode_weights` (transposed copies, prepacked, split by
columns, panels for the small-row kernel), padded and unpadded batches, Q/K/V bias and an untied head; and which step `generate` takes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codefoundry.models import decode_weights, small_gemm  # noqa: E402
from codefoundry.models import generate as generate_module  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.step import StaticStep, Step  # noqa: E402
from codefoundry.models.transformer import KVCache, Transformer  # noqa: E402

VOCAB = 300
TORCH = {"PANELS_MAX_ROWS": 0}  # PyTorch's products, as where the small-row kernel cannot be built
LAYOUTS = {
    "transposed": {**TORCH, "PACKED_MIN_ROWS": 1 << 30, "SPLIT_MIN_COLUMNS": 1 << 30},
    "packed": {**TORCH, "PACKED_MIN_ROWS": 1, "PACKED_MIN_ELEMENTS": 0, "SPLIT_MIN_COLUMNS": 1 << 30},
    "split": {**TORCH, "PACKED_MIN_ROWS": 1, "SPLIT_MIN_COLUMNS": 8, "SPLIT_MIN_ELEMENTS": 0},
    "panels": {"PANELS_MAX_ROWS": 64},  # the small-row kernel (skipped where it is unavailable)
}


def _model(**kw) -> Transformer:
    # A large init spreads the logits, so greedy choices are not decided by float rounding.
    torch.manual_seed(0)
    kw.setdefault("init_std", 0.3)
    return Transformer(config_for_size("tiny", VOCAB, max_seq_len=64, **kw)).eval()


def _prompts(lengths, vocab: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _prefilled(model: Transformer, rows: int, padded: bool):
    """A cache after a prompt forward, and the step's key mask and positions (left padding for `padded`)."""
    g = torch.Generator().manual_seed(rows)
    lengths = [3 + (5 * r) % 7 if padded else 6 for r in range(rows)]
    longest = max(lengths)
    ids = torch.randint(0, VOCAB, (rows, longest), generator=g)
    cache = KVCache.empty(
        model.cfg, rows, longest + 8, layers=model.cfg.n_layers, device="cpu", dtype=torch.float32
    )
    pads = torch.tensor([longest - n for n in lengths]).unsqueeze(1)
    keys = positions = mask = None
    if padded:
        visible = torch.arange(longest + 8) >= pads  # (rows, S)
        positions = (torch.arange(longest) - pads).clamp_min(0)
        causal = torch.ones(longest, longest, dtype=torch.bool).tril()
        mask = ((causal & visible[:, None, :longest]) | torch.eye(longest, dtype=torch.bool)).unsqueeze(1)
        keys = torch.zeros(rows, 1, 1, longest + 8).masked_fill_(~visible.view(rows, 1, 1, -1), float("-inf"))
    with torch.inference_mode():
        generate_module._prefill(model, ids, cache, positions, mask)
    last = None if positions is None else positions[:, -1:].clone()
    return cache, keys, last, torch.randint(0, VOCAB, (rows, 1), generator=g)


def _ending_at(lengths):
    """An on_token callback that ends row r after lengths[r] tokens."""
    counts = [0] * len(lengths)

    def on_token(row: int, token: int) -> bool:
        counts[row] += 1
        return counts[row] >= lengths[row]

    return on_token


def _count_drops(monkeypatch) -> list[int]:
    """The batch sizes KVCache.keep_rows shrinks to, as generation calls it."""
    sizes: list[int] = []
    original = KVCache.keep_rows

    def spy(self, rows):
        sizes.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(KVCache, "keep_rows", spy)
    return sizes


@pytest.mark.parametrize("kw", [{}, {"moe_experts": 4}, {"qkv_bias": True, "tie_embeddings": False}])
@pytest.mark.parametrize("lengths", [(1, 9, 16, 3, 5, 16, 2, 12), (16, 2, 2, 2)])
def test_dropping_finished_rows_changes_no_row(kw, lengths, monkeypatch):
    # Rows end at different lengths (a callback here; stop ids and strings end rows the same way), so the
    # batch drops its finished rows as it goes: each row must still get what it gets alone, padded prompts
    # included (the mask and positions follow the rows), greedy and sampled.
    model = _model(**kw)
    prompts = _prompts((1, 6, 11, 4, 9, 2, 7, 3)[: len(lengths)])
    drops = _count_drops(monkeypatch)
    got = generate(model, prompts, max_new_tokens=16, on_token=_ending_at(lengths))
    assert drops == sorted(set(drops), reverse=True) and drops[-1] >= 1
    assert len(drops) == len(set(lengths)) - 1  # a drop whenever rows end and others go on
    assert [len(r) for r in got] == list(lengths)
    alone = [generate(model, [p], max_new_tokens=n)[0] for p, n in zip(prompts, lengths, strict=True)]
    assert got == alone
    sampled = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)
    logprobs: list[list[float]] = []
    with_drops = generate(model, prompts, on_token=_ending_at(lengths), logprobs=logprobs, **sampled)
    monkeypatch.setattr("codefoundry.models.generate.COMPACT_BELOW", 0.0)
    drops.clear()
    kept_logprobs: list[list[float]] = []
    kept = generate(model, prompts, on_token=_ending_at(lengths), logprobs=kept_logprobs, **sampled)
    assert not drops and with_drops == kept
    assert torch.allclose(torch.tensor(sum(logprobs, [])), torch.tensor(sum(kept_logprobs, [])), atol=1e-5)


def test_keep_rows_moves_the_filled_positions_of_the_kept_rows():
    cfg = config_for_size("tiny", VOCAB, max_seq_len=16)
    cache = KVCache.empty(cfg, 5, 16, layers=2, device="cpu", dtype=torch.float32)
    for t in (*cache.k, *cache.v):
        t.copy_(torch.randn(t.shape))
    cache.length = 7
    before = [t.clone() for t in (*cache.k, *cache.v)]
    cache.keep_rows([0, 4, 3])  # rows 1 and 2 ended: 4 and 3 take their places
    for old, new in zip(before, (*cache.k, *cache.v), strict=True):
        assert new.shape[0] == 3 and new.is_contiguous()
        assert torch.equal(new[:, :, :7], old[[0, 4, 3], :, :7])
    for bad in ([], [1, 0], [0, 0], [0, 1, 2, 3]):  # a row moved up, twice, past the end
        with pytest.raises(ValueError, match="keep_rows"):
            cache.keep_rows(bad)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": False}])
@pytest.mark.parametrize("rows,padded", [(1, False), (9, False), (9, True)])
def test_the_fixed_buffer_step_gives_the_eager_steps_logits(layout, kw, rows, padded, monkeypatch):
    if layout == "panels" and small_gemm.library() is None:
        pytest.skip(f"the small-row kernel is unavailable here: {small_gemm.why_not()}")
    for name, value in LAYOUTS[layout].items():
        monkeypatch.setattr(decode_weights, name, value)
    model = _model(**kw)
    cache, keys, positions, tokens = _prefilled(model, rows, padded)
    length = cache.length
    with torch.inference_mode():
        eager = Step(model, cache, keys)
        fixed = Step(model, cache, keys, static=True)
        assert fixed.static and not eager.static
        assert isinstance(eager.layers[0].qkv, decode_weights._Panels) == (layout == "panels")
        for _ in range(3):  # three tokens: the buffers are reused, the cache grows
            want, want_hidden = eager(tokens, positions)
            cache.length -= 1
            got, hidden = fixed(tokens, positions)
            assert isinstance(fixed._fixed, StaticStep) and cache.length == length + 1
            # Within 1e-5 of each tensor's largest magnitude: the kernel's in-order sums (and its norm and
            # rotary op, fused multiply-adds) round differently from PyTorch's ops in the last bits.
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
            assert (hidden - want_hidden).abs().max() <= 1e-5 * want_hidden.abs().max()
            if layout != "panels":  # the same PyTorch ops on both sides: the same values
                assert torch.equal(got, want) and torch.equal(hidden, want_hidden)
            tokens = want[:, -1].argmax(-1, keepdim=True)
            if positions is not None:
                positions = positions + 1
            length += 1


def test_generate_takes_the_fixed_buffer_step_where_the_layout_allows(monkeypatch):
    calls: list[int] = []
    original = StaticStep.__call__

    def spy(self, tokens, positions):
        calls.append(len(tokens))
        return original(self, tokens, positions)

    monkeypatch.setattr(StaticStep, "__call__", spy)
    prompts = [[5, 6, 7], [8, 9], [1]]
    generate(_model(), prompts, max_new_tokens=4, on_token=_ending_at([4, 2, 4]))
    assert calls == [3, 2, 2]  # three steps; after the first, row 1 has left the batch
    calls.clear()
    generate(_model(moe_experts=4), prompts, max_new_tokens=4)  # a MoE block: the eager step
    generate(_model().to(torch.bfloat16), prompts, max_new_tokens=4)  # not fp32
    assert calls == []


def test_the_fixed_buffer_step_refuses_a_position_past_the_cache():
    if small_gemm.library() is None:
        pytest.skip(f"the small-row kernel is unavailable here: {small_gemm.why_not()}")
    model = _model()
    cache, keys, positions, tokens = _prefilled(model, 2, False)
    cache.length = cache.k[0].shape[2]  # full: the next token has no place
    with torch.inference_mode(), pytest.raises(IndexError, match="past the KV cache"):
        Step(model, cache, keys, static=True)(tokens, positions)
