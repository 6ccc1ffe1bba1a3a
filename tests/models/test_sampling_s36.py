"""Sampling (`codefoundry.models.sampling`): each row's own seeded stream, so a row's samples do not depend
on the batch it is in, and min-p. Tiny random models built here."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import checkpoint  # noqa: E402
from codefoundry.models import tokenizer as tokenizer_module  # noqa: E402
from codefoundry.models.backends import SamplingParams, load_backend  # noqa: E402
from codefoundry.models.completion import complete, generate_command  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.sampling import Sampler, child_seed  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

VOCAB = 300


def _model(init_std: float = 0.02) -> Transformer:
    torch.manual_seed(0)  # a small init: flat logits, so samples differ between streams
    return Transformer(config_for_size("tiny", VOCAB, max_seq_len=128, init_std=init_std)).eval()


def _prompts(lengths=(3, 7, 1, 5, 9)) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def test_a_rows_samples_do_not_depend_on_the_batch_it_is_in():
    model, prompts = _model(), _prompts()
    kw = dict(max_new_tokens=10, temperature=1.0)
    together = generate(model, prompts, seed=5, **kw)
    assert generate(model, prompts[:1], seed=5, **kw)[0] == together[0]
    seeds = [child_seed(5, i) for i in range(len(prompts))]
    # Each row alone, given its stream's seed, and the batch in reverse order with the seeds reversed.
    assert [generate(model, [p], seed=[s], **kw)[0] for p, s in zip(prompts, seeds, strict=True)] == together
    assert generate(model, prompts[::-1], seed=seeds[::-1], **kw) == together[::-1]
    assert len({tuple(r) for r in together}) == len(together)


def test_equal_seeds_give_equal_rows_and_a_wrong_seed_list_is_refused():
    model, [p] = _model(), _prompts((4,))
    a, b, c = generate(model, [p, p, p], max_new_tokens=12, temperature=1.0, seed=[1, 1, 2])
    assert a == b != c
    for temperature in (1.0, 0.0):
        with pytest.raises(ValueError, match="one int per prompt"):
            generate(model, [p, p], max_new_tokens=2, temperature=temperature, seed=[1])
    with pytest.raises(ValueError, match="seed must be"):
        generate(model, [p], max_new_tokens=2, temperature=1.0, seed=1.5)


def test_complete_gives_the_same_texts_whatever_the_batch_size(tmp_path):
    tok = tokenizer_module.train(tokenizer_module.default_corpus()[:20], vocab_size=400, out=tmp_path / "tok")
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=128, init_std=0.05)).eval()
    prompts = ["def f(x):\n", "import os\n", "class A:\n    ", "x = [", "for i in range(3):\n"]
    kw = dict(max_new_tokens=12, temperature=1.0, seed=3)
    texts = complete(model, tok, prompts, batch_size=16, **kw)
    assert complete(model, tok, prompts, batch_size=1, **kw) == texts
    assert complete(model, tok, prompts, batch_size=2, **kw) == texts
    assert complete(model, tok, prompts[:2], batch_size=16, **kw) == texts[:2]
    # The cf: backend's n samples are rows of their own too: n = 3 over one prompt, at any batch size.
    ckpt = checkpoint.save(model, tmp_path / "ckpt", tokenizer=tmp_path / "tok")
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=9)
    out = load_backend(f"cf:{ckpt}", batch_size=16).complete(prompts[:2], params)
    assert load_backend(f"cf:{ckpt}", batch_size=1).complete(prompts[:2], params) == out
    assert len(set(out[0])) > 1


def test_each_stream_is_uniform_and_the_streams_are_independent():
    sampler = Sampler(1.0, 0, 1.0, 0.0, seed=0, rows=64)
    draws = np.stack([sampler._uniforms() for _ in range(2000)])  # (steps, rows)
    assert draws.min() >= 0 and draws.max() < 1
    flat = np.sort(draws.ravel())
    ks = np.abs(flat - (np.arange(len(flat)) + 0.5) / len(flat)).max()  # Kolmogorov-Smirnov statistic
    assert ks < 1.63 / math.sqrt(len(flat))  # the 1% critical value
    corr = np.corrcoef(draws.T)[np.triu_indices(64, 1)]  # between rows
    lagged = np.corrcoef(draws[:-1].ravel(), draws[1:].ravel())[0, 1]  # within a row, step to step
    assert np.abs(corr).max() < 0.1 and abs(lagged) < 0.02
    # Nearby seeds and nearby rows do not give shifted copies of one another's streams.
    a = Sampler(1.0, 0, 1.0, 0.0, seed=[0, 1], rows=2)
    first = np.stack([a._uniforms() for _ in range(50)])
    assert not np.isin(first[:, 0], first[:, 1]).any()


def test_unseeded_calls_do_not_repeat_themselves():
    model, prompts = _model(), _prompts((4, 4))
    runs = {tuple(map(tuple, generate(model, prompts, max_new_tokens=8, temperature=1.0))) for _ in range(3)}
    assert len(runs) == 3


def test_min_p_draws_only_tokens_at_least_min_p_times_as_likely_as_the_top_one():
    model = _model(init_std=0.3)  # spread logits: a few likely tokens, a long tail
    [prompt] = _prompts((6,))
    with torch.no_grad():
        probs = (model(torch.tensor([prompt])).logits[0, -1] / 3.0).softmax(-1)
    allowed = set((probs >= 0.3 * probs.max()).nonzero().flatten().tolist())
    assert 2 < len(allowed) < 10 and probs[list(allowed)].sum() < 0.2  # the tail holds most of the mass
    firsts = {
        generate(model, [prompt], max_new_tokens=1, temperature=3.0, min_p=0.3, seed=s)[0][0]
        for s in range(300)
    }
    assert firsts == allowed  # all of them drawn over 300 seeds, and nothing else
    plain = {generate(model, [prompt], max_new_tokens=1, temperature=3.0, seed=s)[0][0] for s in range(300)}
    assert not plain <= allowed
    # min_p 1 keeps only the top token: greedy at any temperature.
    prompts = _prompts()
    greedy = generate(model, prompts, max_new_tokens=10)
    assert generate(model, prompts, max_new_tokens=10, temperature=3.0, min_p=1.0, seed=1) == greedy


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_a_min_p_outside_0_1_is_refused_in_one_line(bad, tmp_path):
    model, prompts = _model(), _prompts((3,))
    with pytest.raises(ValueError, match="min_p"):
        generate(model, prompts, max_new_tokens=2, temperature=1.0, min_p=bad)
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(temperature=1.0, min_p=bad)
    with pytest.raises(ValueError, match="--min-p"):  # before the checkpoint is even looked for
        generate_command(str(tmp_path / "none"), "x", None, 4, 1.0, 1.0, 0, False, min_p=bad)


def test_a_cf_prompts_samples_do_not_depend_on_the_other_prompts_of_the_call(tmp_path):
    """What an eval resumed after a kill relies on: it regenerates only the lost problems, in a call of
    their own, and must get the samples the uninterrupted run got."""
    tok = tokenizer_module.train(tokenizer_module.default_corpus()[:20], vocab_size=400, out=tmp_path / "tok")
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=128, init_std=0.05))
    ckpt = checkpoint.save(model, tmp_path / "ckpt", tokenizer=tmp_path / "tok")
    backend = load_backend(f"cf:{ckpt}", batch_size=4)
    prompts = ["def f(x):\n", "import os\n", "class A:\n    ", "x = ["]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=4)
    whole = backend.complete(prompts, params)
    assert backend.complete(prompts[2:3], params) == whole[2:3]
    assert backend.complete(prompts[::-1], params) == whole[::-1]
    assert (
        backend.complete(prompts[:2], SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=5))
        != whole[:2]
    )


def test_the_sampler_draws_each_token_at_its_probability_and_never_a_zero_one():
    from codefoundry.models.sampling import _draw

    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(50_000, 1)
    uniforms = np.random.default_rng(0).random(len(probs))
    uniforms[:4] = [0.0, 1.0 - 2**-53, 0.5, 0.7]  # the ends: 1 - 2^-53 rounds to 1.0 in fp32
    drawn = _draw(probs, uniforms)
    first = torch.bincount(drawn[0::2], minlength=5) / 50_000
    assert torch.allclose(first, probs[0], atol=0.01) and first[1] == first[4] == 0
    assert (drawn[1::2] == 4).all()
