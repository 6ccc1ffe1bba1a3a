"""Generation against plain recomputation: the cached loop vs argmax over a full forward per step, padded
batches vs each prompt alone, sampling knobs, stop ids and strings, streaming, FIM layout, speculative
decoding vs greedy (random and briefly trained MTP), and the held-out infilling checks."""

from __future__ import annotations

import ast
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import decode_weights  # noqa: E402
from codefoundry.models import tokenizer as tokenizer_module  # noqa: E402
from codefoundry.models.completion import _fit, complete, fim_prompt_ids, generate_command  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.generate import (  # noqa: E402
    decode,
    decode_after,
    generate,
    heal_prompts,
    speculative_decode,
    token_bytes,
)
from codefoundry.models.infill_eval import (  # noqa: E402
    InfillExample,
    _BodyEnd,
    fim_exact_match,
    heldout_functions,
    heldout_lines,
    syntax_valid_fraction,
)
from codefoundry.models.transformer import Transformer  # noqa: E402

VOCAB = 300


def _model(vocab: int = VOCAB, **kw) -> Transformer:
    # A large init spreads the logits, so greedy choices are not decided by float rounding.
    torch.manual_seed(0)
    kw.setdefault("init_std", 0.3)
    return Transformer(config_for_size("tiny", vocab, max_seq_len=128, **kw)).eval()


def _prompts(lengths=(1, 6, 11, 4), vocab: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _greedy_by_recomputation(model: Transformer, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    files = tokenizer_module.default_corpus()[:40]
    return tokenizer_module.train(files, vocab_size=512, out=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def text_model(tok):
    return _model(tok.get_vocab_size())


# -- the decoding loop ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"moe_experts": 4}, {"qkv_bias": True, "tie_embeddings": False}])
def test_cached_generation_equals_argmax_of_a_full_forward_per_step(kw):
    model = _model(**kw)
    for prompt in _prompts((1, 7)):
        assert generate(model, [prompt], max_new_tokens=20) == [_greedy_by_recomputation(model, prompt, 20)]


@pytest.mark.parametrize("kw", [{}, {"moe_experts": 4}])
def test_left_padded_batch_gives_each_row_what_it_gets_alone(kw):
    model = _model(**kw)
    prompts = _prompts()
    alone = [generate(model, [p], max_new_tokens=16)[0] for p in prompts]
    assert generate(model, prompts, max_new_tokens=16) == alone
    assert alone[1] == _greedy_by_recomputation(model, prompts[1], 16)


def test_changed_weights_are_seen_by_the_next_call():
    # The CPU step keeps transposed copies of the weights; an in-place update must not leave them stale.
    model = _model()
    prompt = _prompts((5,))[0]
    before = generate(model, [prompt], max_new_tokens=12)[0]
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.down.weight.mul_(-3.0)
    after = generate(model, [prompt], max_new_tokens=12)[0]
    assert after == _greedy_by_recomputation(model, prompt, 12) and after != before
    # The norms' weights are folded into the copies of the Q/K/V and gate/up matrices.
    with torch.no_grad():
        for layer in model.layers:
            layer.attn_norm.weight.copy_(torch.linspace(-2.0, 2.0, layer.attn_norm.weight.numel()))
            layer.mlp_norm.weight.mul_(0.25)
    renormed = generate(model, [prompt], max_new_tokens=12)[0]
    assert renormed == _greedy_by_recomputation(model, prompt, 12) and renormed != after


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": False}, {"moe_experts": 4}])
@pytest.mark.parametrize("min_elements", [0, decode_weights.PACKED_MIN_ELEMENTS])
def test_batches_of_prepacked_weights_agree_with_one_row_at_a_time(kw, min_elements, monkeypatch):
    # From PACKED_MIN_ROWS rows on, the CPU step multiplies by oneDNN-prepacked copies of the weights of at
    # least PACKED_MIN_ELEMENTS entries: every matrix of this small model (min_elements 0), or none of them.
    assert decode_weights.PACKED_MIN_ROWS <= 9
    monkeypatch.setattr(decode_weights, "PACKED_MIN_ELEMENTS", min_elements)
    monkeypatch.setattr(decode_weights, "SPLIT_MIN_COLUMNS", 1 << 30)  # no matrix split by columns
    monkeypatch.setattr(decode_weights, "PANELS_MAX_ROWS", 0)  # nor multiplied by the small-row kernel
    model = _model(**kw)
    prompts = _prompts((3, 8, 1, 5, 5, 12, 2, 7, 4))
    together = generate(model, prompts, max_new_tokens=10)
    assert together == [generate(model, [p], max_new_tokens=10)[0] for p in prompts]
    assert together[5] == _greedy_by_recomputation(model, prompts[5], 10)
    with torch.no_grad():  # an in-place update must not leave the packed copies stale
        for layer in model.layers:
            layer.attn.out.weight.mul_(-2.0)
    assert generate(model, prompts, max_new_tokens=10)[3] == _greedy_by_recomputation(model, prompts[3], 10)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": False}])
def test_weights_split_by_columns_across_threads_decode_the_same(threads, kw, monkeypatch):
    # With several threads the step's matrices are stored as one slice of output columns per thread and
    # multiplied by one bmm (at one row only the largest ones, and never the head at batch sizes that pack).
    # 3 threads: the tiny model's widths are even, so some matrices take fewer slices than threads.
    monkeypatch.setattr(decode_weights, "SPLIT_MIN_COLUMNS", 8)
    monkeypatch.setattr(decode_weights, "SPLIT_MIN_ELEMENTS", 0)
    monkeypatch.setattr(decode_weights, "PANELS_MAX_ROWS", 0)
    model = _model(**kw)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 9):
            layers, head = decode_weights.step_weights(model, rows)
            block = model.layers[0]
            h = torch.randn(rows, model.cfg.dim)
            x = torch.randn(rows, model.cfg.dim)
            with torch.no_grad():
                act = layers[0].swiglu(h * block.mlp_norm.weight.reciprocal() / model.cfg.dim**0.5)
                gate, up = block.mlp.gate_up(h).chunk(2, dim=-1)
                assert torch.allclose(act, torch.nn.functional.silu(gate) * up, atol=1e-5)
                a = torch.randn(rows, block.mlp.down.weight.shape[1])
                assert torch.allclose(layers[0].down(a, x), x + block.mlp.down(a), atol=1e-5)
                assert torch.allclose(layers[0].out(h, x), x + block.attn.out(h), atol=1e-5)
                assert torch.allclose(head(h), model.lm_head(h), atol=1e-5)
        prompts = _prompts((3, 8, 1, 5, 5, 12, 2, 7, 4))
        together = generate(model, prompts, max_new_tokens=10)
        alone = [generate(model, [p], max_new_tokens=10)[0] for p in prompts]
    finally:
        torch.set_num_threads(before)
    assert together == alone
    assert together[5] == _greedy_by_recomputation(model, prompts[5], 10)
    torch.set_num_threads(2)
    try:
        assert decode_weights._split("packed", torch.zeros(24, 4), 2).shape == (2, 4, 12)
        assert decode_weights._split("packed", torch.zeros(24, 4), 5).shape == (3, 4, 8)  # >= 8 columns
        assert decode_weights._split("packed", torch.zeros(40, 4), 3).shape == (
            2,
            4,
            20,
        )  # 3 does not divide 40
        assert decode_weights._split("views", torch.zeros(24, 4), 2) is None
        torch.set_num_threads(4)  # 3 slices of >= 8 columns for 4 threads: one would idle
        assert decode_weights._split("packed", torch.zeros(24, 4), 8) is None
    finally:
        torch.set_num_threads(before)


def test_models_too_large_to_copy_decode_through_views_of_the_weights(monkeypatch):
    # Past COPY_LIMIT (and on GPUs) the step reads the weights in place: nothing folded, nothing fused.
    monkeypatch.setattr(decode_weights, "COPY_LIMIT", 0)
    model = _model(qkv_bias=True)
    layers, _ = decode_weights.step_weights(model, 1)
    assert all(layer.attn_scale is not None and layer.mlp_scale is not None for layer in layers)
    prompts = _prompts((4, 9))
    assert generate(model, prompts, max_new_tokens=10)[1] == _greedy_by_recomputation(model, prompts[1], 10)


def test_bfloat16_models_generate():
    model = _model().to(torch.bfloat16)
    out = generate(model, _prompts(), max_new_tokens=6)
    assert [len(row) for row in out] == [6, 6, 6, 6]
    assert out[2][:3] == _greedy_by_recomputation(model, _prompts()[2], 3)


def test_equal_length_batch_takes_the_unpadded_path_and_agrees():
    model = _model()
    prompts = _prompts((5, 5, 5))
    assert generate(model, prompts, max_new_tokens=10) == [
        generate(model, [p], max_new_tokens=10)[0] for p in prompts
    ]


def test_same_seed_same_samples():
    model = _model(init_std=0.02)  # flat logits: samples differ between seeds
    prompts = _prompts()
    a = generate(model, prompts, max_new_tokens=12, temperature=1.0, seed=7)
    assert a == generate(model, prompts, max_new_tokens=12, temperature=1.0, seed=7)
    assert a != generate(model, prompts, max_new_tokens=12, temperature=1.0, seed=8)
    assert all(len(row) == 12 for row in a)


def test_greedy_argmax_matches_torch_on_ties_nan_and_strided_rows():
    from codefoundry.models.sampling import argmax as _argmax

    x = torch.randn(16, 100)
    x[3, 5] = x[3, 50] = 99.0  # a tie: the first index
    x[4, 7] = x[4, 9] = float("nan")  # NaN is the maximum, the first one
    for logits in (x, x[:, ::3], x.double(), x.to(torch.bfloat16)):
        got = _argmax(logits)
        assert got.dtype == torch.int64 and torch.equal(got, logits.argmax(dim=-1))


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = _model(init_std=0.02)
    prompts = _prompts()
    greedy = generate(model, prompts, max_new_tokens=10)
    assert generate(model, prompts, max_new_tokens=10, temperature=1.5, top_k=1, seed=3) == greedy
    assert generate(model, prompts, max_new_tokens=10, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_top_k_samples_stay_among_the_k_most_likely():
    model = _model(init_std=0.02)
    prompt = _prompts((6,))[0]
    with torch.no_grad():
        top = set(model(torch.tensor([prompt])).logits[0, -1].topk(5).indices.tolist())
    firsts = {
        generate(model, [prompt], max_new_tokens=1, temperature=2.0, top_k=5, seed=s)[0][0] for s in range(40)
    }
    assert firsts <= top and len(firsts) > 1


def test_nucleus_keeps_exactly_the_tokens_the_sorted_rule_keeps():
    """Top-p by a threshold on sorted values equals the rule on the sorted order (drop a token once the
    tokens before it cover top_p), over peaked and flat rows and rows with top-k's -inf; the two may
    differ only on a token whose preceding mass is top_p to float rounding."""
    from codefoundry.models.sampling import _nucleus

    def by_sorting(logits, top_p):
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p
        return logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))

    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        logits = torch.randn(6, 300, generator=g) * (0.3 + trial % 7)
        logits[:, :40] = float("-inf") if trial % 3 == 0 else logits[:, :40]
        top_p = (0.05, 0.5, 0.9, 0.95, 0.999)[trial % 5]
        ours, want = _nucleus(logits, top_p).isinf(), by_sorting(logits, top_p).isinf()
        for row in (ours != want).any(dim=-1).nonzero().flatten().tolist():
            probs = logits[row].softmax(dim=-1)
            before = {
                int(i): float(probs[probs > probs[i]].sum()) for i in (ours[row] != want[row]).nonzero()
            }
            assert len(before) == 1 and all(abs(m - top_p) < 1e-5 for m in before.values()), (trial, before)


def test_logprobs_are_the_sampled_tokens_log_probs_under_a_full_forward():
    """Padded rows, temperature 0.7, top-k 5 and a stop id: each returned token's recorded log-prob is
    log softmax(logits / 0.7) of a plain forward over prompt + tokens (the unrestricted distribution),
    and a stop id, not returned, gets none."""
    model, prompts = _model(), _prompts()
    kw = {"max_new_tokens": 12, "temperature": 0.7, "top_k": 5, "seed": 3}
    stop = generate(model, prompts, **kw)[0][2]  # a token row 0 samples third
    logprobs: list[list[float]] = []
    out = generate(model, prompts, stop_ids=[stop], logprobs=logprobs, **kw)
    assert len(out[0]) <= 2 and [len(r) for r in logprobs] == [len(r) for r in out]
    with torch.no_grad():
        for prompt, new, got in zip(prompts, out, logprobs, strict=True):
            logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1 : -1] / 0.7
            want = logits.log_softmax(-1).gather(1, torch.tensor(new)[:, None]).squeeze(1)
            assert torch.allclose(torch.tensor(got), want, atol=1e-4)
    with pytest.raises(ValueError, match="logprobs"):
        generate(model, prompts[:1], max_new_tokens=2, speculative=True, logprobs=[])


def test_a_stop_id_ends_its_row_and_is_not_returned():
    model = _model()
    prompts = _prompts((3, 8))
    full = generate(model, prompts, max_new_tokens=20)
    # The first token of row 0 that did not occur before it: generation must stop right there.
    i = next(i for i, t in enumerate(full[0]) if i > 0 and t not in full[0][:i])
    got = generate(model, prompts, max_new_tokens=20, stop_ids=[full[0][i]])
    assert got[0] == full[0][:i]
    j = full[1].index(full[0][i]) if full[0][i] in full[1] else len(full[1])
    assert got[1] == full[1][:j]


def test_stop_strings_cut_the_text_before_them(tok, text_model):
    prompt = "def add(a, b):\n"
    full = complete(text_model, tok, [prompt], max_new_tokens=24)[0]
    assert len(full) > 6
    stop = full[3:6]  # a stop string that starts inside the text, wherever tokens split it
    cut = full[: full.find(stop)]
    assert complete(text_model, tok, [prompt], max_new_tokens=24, stop=[stop]) == [cut]
    ids = tok.encode(prompt, add_special_tokens=False).ids
    short = generate(text_model, [ids], max_new_tokens=24, stop_strings=[stop], tokenizer=tok)[0]
    text = decode(token_bytes(tok), short)
    assert stop in text and stop not in decode(token_bytes(tok), short[:-1])  # the last token completed it
    assert len(short) < 24


def test_streaming_callbacks_see_tokens_in_order_and_text_adds_up(tok, text_model):
    prompts = _prompts((2, 9), vocab=tok.get_vocab_size())
    seen: list[tuple[int, int]] = []
    out = generate(text_model, prompts, max_new_tokens=8, on_token=lambda r, t: seen.append((r, t)))
    assert [t for r, t in seen if r == 0] == out[0] and [t for r, t in seen if r == 1] == out[1]
    assert [r for r, _ in seen[:4]] == [0, 1, 0, 1]  # row by row within a step, step by step
    texts = ["def f(x):\n", "class A:\n    "]
    full = complete(text_model, tok, texts, max_new_tokens=20)
    stop = full[1][4:6]
    pieces: dict[int, list[str]] = {0: [], 1: []}
    got = complete(
        text_model, tok, texts, max_new_tokens=20, stop=[stop], on_text=lambda r, s: pieces[r].append(s)
    )
    assert ["".join(pieces[0]), "".join(pieces[1])] == got
    assert got[1] == full[1][: full[1].find(stop)]


def test_a_callback_returning_true_ends_its_row():
    model = _model()
    out = generate(model, _prompts((4, 4)), max_new_tokens=10, on_token=lambda r, t: r == 1)
    assert len(out[0]) == 10 and len(out[1]) == 1


def test_fim_prompt_layout_is_prefix_suffix_middle(tok):
    ids = fim_prompt_ids(tok, "def f(x):\n", "\n\nprint(f(2))\n")
    assert tok.decode(ids, skip_special_tokens=False) == (
        "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n\nprint(f(2))\n<|fim_middle|>"
    )
    assert ids[0] == tok.token_to_id("<|fim_prefix|>") and ids[-1] == tok.token_to_id("<|fim_middle|>")
    # with a budget, trimmed as `complete` trims a prompt: the prefix's head and the suffix's tail go
    prefix, suffix = "x = 1\n" * 20, "y = 2\n" * 20
    whole = fim_prompt_ids(tok, prefix, suffix)
    n_prefix = whole.index(tok.token_to_id("<|fim_suffix|>")) - 1
    assert fim_prompt_ids(tok, prefix, suffix, budget=15) == _fit(whole, n_prefix, 15)
    assert len(_fit(whole, n_prefix, 15)) == 15 and fim_prompt_ids(tok, prefix, suffix, budget=10**4) == whole


def test_fim_completion_runs_the_psm_prompt(tok, text_model):
    got = complete(text_model, tok, ["def f(x):\n"], suffixes=["\nprint(f(1))\n"], max_new_tokens=6)
    want = generate(text_model, [fim_prompt_ids(tok, "def f(x):\n", "\nprint(f(1))\n")], max_new_tokens=6)[0]
    fim_stops = {tok.token_to_id(t) for t in ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>")}
    want = want[: next((i for i, t in enumerate(want) if t in fim_stops), len(want))]
    assert got == [decode(token_bytes(tok), want)]


def test_fim_prompts_lose_the_far_ends_of_prefix_and_suffix():
    prefix, suffix = list(range(100, 110)), list(range(200, 210))
    ids = [1, *prefix, 2, *suffix, 3]
    assert _fit(ids, len(prefix), 9) == [1, 107, 108, 109, 2, 200, 201, 202, 3]
    assert _fit(ids, len(prefix), 100) == ids
    assert _fit(list(range(10)), None, 4) == [6, 7, 8, 9]


def test_too_long_prompts_are_trimmed_by_complete_and_refused_by_generate(tok, text_model):
    long = "x = 1\n" * 400
    assert isinstance(complete(text_model, tok, [long], max_new_tokens=8)[0], str)
    assert isinstance(complete(text_model, tok, [long], suffixes=[long], max_new_tokens=8)[0], str)
    with pytest.raises(ValueError, match="prompt 0 has .* max_seq_len=128"):
        generate(text_model, [[1] * 120], max_new_tokens=9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": [[]]}, "prompt 0 is empty"),
        ({"prompts": [[1], [VOCAB]]}, r"prompt 1 has a token id outside \[0, 300\)"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"top_p": 0.0}, "0 < top_p <= 1"),
        ({"stop_strings": ["x"]}, "need the tokenizer"),
        ({"speculative": True, "temperature": 0.5}, "greedy only"),
        ({"speculative": True}, r"needs a model with MTP modules"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(kwargs, message):
    args = {"prompts": [[1, 2]], "max_new_tokens": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(_model(), args.pop("prompts"), **args)


# -- speculative decoding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_speculative_equals_greedy_with_random_weights(depth):
    model = _model(mtp_depth=depth)
    prompts = _prompts((1, 2, 9))
    greedy = generate(model, prompts, max_new_tokens=25)
    assert generate(model, prompts, max_new_tokens=25, speculative=True) == greedy
    for prompt, want in zip(prompts, greedy, strict=True):
        result = speculative_decode(model, prompt, max_new_tokens=25)
        assert result.tokens == want
        assert result.forwards <= 25 and result.drafted >= result.accepted


def _train_counting_model(depth: int) -> Transformer:
    """A tiny MTP model trained briefly on arithmetic sequences mod 64, so its drafts are often right."""
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", 64, max_seq_len=128, mtp_depth=depth))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        seq = _counting(torch.randint(0, 64, (8, 1)), torch.randint(1, 4, (8, 1)), 33)
        loss = model(seq[:, :-1], seq[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _counting(start: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
    return (start + step * torch.arange(n)) % 64  # (B, n)


def test_speculative_equals_greedy_on_a_trained_model_and_accepts_drafts():
    model = _train_counting_model(depth=2)
    prompts = _counting(torch.tensor([[3], [10], [40]]), torch.tensor([[1], [2], [3]]), 6).tolist()
    prompts.append([5, 60, 7, 7, 2, 33])  # off-distribution: drafts are partly wrong, rollbacks happen
    drafted = accepted = 0
    for prompt in prompts:
        want = generate(model, [prompt], max_new_tokens=40)[0]
        result = speculative_decode(model, prompt, max_new_tokens=40)
        assert result.tokens == want
        drafted, accepted = drafted + result.drafted, accepted + result.accepted
    assert accepted / drafted > 0.6, (accepted, drafted)


def test_speculative_honours_stop_ids_and_length():
    model = _model(mtp_depth=2)
    prompt = _prompts((5,))[0]
    full = generate(model, [prompt], max_new_tokens=30)[0]
    i = next(i for i, t in enumerate(full) if i > 2 and t not in full[:i])
    assert speculative_decode(model, prompt, max_new_tokens=30, stop_ids=[full[i]]).tokens == full[:i]
    assert speculative_decode(model, prompt, max_new_tokens=7).tokens == full[:7]


# -- held-out functions ------------------------------------------------------------------------------------
SOURCE = (
    '''import os


def short(a, b):
    """Add."""
    c = a + b
    return c


class K:
    def method(self):
        return 1

    def one_liner(self): return 2

    def only_doc(self):
        """Nothing else."""


def long_one(x):
'''
    + "".join(f"    x += {i}\n" for i in range(20))
    + "    return x\n"
)


def test_heldout_functions_hides_short_bodies_and_keeps_the_rest():
    examples = heldout_functions([SOURCE, "def broken(:\n"], limit=10, seed=0)
    assert sorted(e.name for e in examples) == ["0:K.method:11", "0:short:4"]
    for e in examples:
        assert e.prefix + e.middle + e.suffix == SOURCE  # budgets are larger than the file
        assert e.prefix.endswith("\n") and 1 <= e.middle.count("\n") <= 15
        ast.parse(textwrap.dedent(e.header + e.middle))
    short = next(e for e in examples if e.name.endswith(":short:4"))
    assert short.middle == "    c = a + b\n    return c\n"
    assert short.header == 'def short(a, b):\n    """Add."""\n'
    assert heldout_functions([SOURCE], limit=10, seed=0) == heldout_functions([SOURCE], limit=10, seed=0)
    assert len(heldout_functions([SOURCE], limit=1, seed=0)) == 1


def test_heldout_lines_hide_one_line_of_each_body():
    functions = heldout_functions([SOURCE], limit=10, seed=0)
    lines = heldout_lines(functions, seed=0)
    assert len(lines) == len(functions) and lines == heldout_lines(functions, seed=0)
    for e, f in zip(lines, functions, strict=True):
        assert e.prefix + e.middle + e.suffix == SOURCE
        assert e.middle.count("\n") == 1 and e.middle.endswith("\n") and e.middle.strip()
        assert e.middle in f.middle and e.prefix.startswith(f.prefix) and e.suffix.endswith(f.suffix)
        assert e.header == f.header and e.name.startswith(f.name + "+")
    assert {e.middle for e in heldout_lines(functions * 20, seed=1)} == {
        line for f in functions for line in f.middle.splitlines(keepends=True)
    }  # every line of a body can be the one hidden


def test_heldout_functions_on_real_files_respects_budgets():
    texts = list(tokenizer_module.read_texts(tokenizer_module.default_corpus()[:30]))
    examples = heldout_functions(texts, limit=25, seed=1, prefix_chars=300, suffix_chars=200)
    assert len(examples) == 25
    for e in examples:
        assert len(e.prefix) <= 300 and len(e.suffix) <= 200
        source = texts[int(e.name.split(":")[0])]
        assert e.prefix + e.middle + e.suffix in source  # cut at line boundaries, nothing changed
        assert e.suffix == "" or e.suffix.endswith("\n") or source.endswith(e.suffix)


def test_body_end_is_the_first_line_back_at_the_def_indentation(tok):
    table = token_bytes(tok)
    text = "        x = 1\n\n  \n        return x\n    def g(self):\n        pass\n"
    watcher = _BodyEnd(table, 4)
    ids = tok.encode(text, add_special_tokens=False).ids
    ended_at = next(i for i, t in enumerate(ids) if watcher.push(t))
    assert "def" in decode(table, ids[: ended_at + 1])[-12:]
    assert _BodyEnd(table, 4).cut(text) == "        x = 1\n\n  \n        return x\n"
    assert _BodyEnd(table, 0).cut("    pass\n# comment\nx = 1\n") == "    pass\n# comment\n"  # no statement


def test_first_tokens_restrict_only_the_first_new_token():
    model = _model()
    prompts = _prompts((3, 5))
    free = generate(model, prompts, max_new_tokens=6)
    forced = [t for t in range(VOCAB) if t != free[0][0]][:3]
    for temperature in (0.0, 1.0):
        out = generate(model, prompts, max_new_tokens=6, temperature=temperature, seed=0,
                       first_tokens=[forced, None])  # fmt: skip
        assert out[0][0] in forced  # the unconstrained choice was excluded
        if temperature == 0.0:
            assert out[1] == free[1]  # a row without a constraint decodes as before
    with pytest.raises(ValueError, match="one entry per prompt"):
        generate(model, prompts, max_new_tokens=2, first_tokens=[forced])
    with pytest.raises(ValueError, match="allows no token"):
        generate(model, prompts, max_new_tokens=2, first_tokens=[[], None])


def test_heal_prompts_backs_off_a_trailing_newline_token(tok):
    table = token_bytes(tok)
    ends_in_newline = tok.encode("def f(x):\n", add_special_tokens=False).ids
    plain = tok.encode("def f(x):", add_special_tokens=False).ids
    assert table[ends_in_newline[-1]] == b"\n"  # the boundary training text rarely has
    prompts, firsts, skips = heal_prompts([ends_in_newline, plain], table)
    assert prompts == [ends_in_newline[:-1], plain] and skips == [1, 0] and firsts[1] is None
    assert firsts[0] and all(table[t].startswith(b"\n") for t in firsts[0])
    indented = tok.encode("\n    return", add_special_tokens=False).ids
    assert indented[0] in firsts[0] and table[indented[0]] != b"\n"  # newline + indentation, one token
    assert decode_after(table, indented, 1) == "    return"


def test_fim_exact_match_and_syntax_validity_report_fractions(tok, text_model):
    examples = heldout_functions([SOURCE], limit=2, seed=0, prefix_chars=200, suffix_chars=100)
    fim = fim_exact_match(text_model, tok, examples, max_new_tokens=8)
    assert fim["n"] == 2 and 0 <= fim["exact_match"] <= fim["first_line_match"] <= 1
    syntax = syntax_valid_fraction(text_model, tok, examples, n=3, temperature=1.0, seed=0, max_new_tokens=12)
    assert syntax["n"] == 6 and syntax["examples"] == 2 and 0 <= syntax["syntax_valid"] <= 1
    records: list[dict] = []
    again = syntax_valid_fraction(
        text_model, tok, examples, n=3, temperature=1.0, seed=0, max_new_tokens=12, records=records
    )
    assert again == syntax
    # One record a sample: its body, and the parser's message exactly when the function does not parse.
    assert [r["name"] for r in records] == [e.name for e in examples for _ in range(3)]
    assert sum(r["error"] is None for r in records) == syntax["valid"]
    for r, e in zip(records, [e for e in examples for _ in range(3)], strict=True):
        try:
            ast.parse(textwrap.dedent(e.header + r["body"]))
            assert r["error"] is None
        except SyntaxError as err:
            assert r["error"] == err.msg
    handmade = InfillExample(prefix="def f():\n", middle="    return 1\n", suffix="", name="f")
    assert (
        syntax_valid_fraction(text_model, tok, [handmade], n=1, temperature=0.0, seed=0, max_new_tokens=4)[
            "n"
        ]
        == 1
    )


def test_generate_command_streams_what_it_returns(tmp_path, tok, text_model, capsys):
    from codefoundry.models import checkpoint

    ckpt = checkpoint.save(text_model, tmp_path / "ckpt")
    tokenizer_module.save(tok, ckpt)
    text = generate_command(str(ckpt), "def f(x):\n", None, 10, 0.0, 1.0, None, True)
    assert capsys.readouterr().out == text
    assert text == complete(text_model, tok, ["def f(x):\n"], max_new_tokens=10)[0]
    middle = generate_command(str(ckpt), "def f(x):\n", "\n", 6, 0.0, 1.0, None, False)
    assert capsys.readouterr().out == "" and isinstance(middle, str)
