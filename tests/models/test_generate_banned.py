"""`generate(banned_ids=)`: tokens no well-formed continuation holds (the FIM sentinels) are never drawn,
greedy, sampled or speculative, and the text-level callers ban the sentinels."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import tokenizer as tokenizer_module  # noqa: E402
from codefoundry.models.completion import complete  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.generate import (  # noqa: E402
    FIM_BANNED,
    PLAIN_BANNED,
    generate,
    ids_of,
    speculative_decode,
)
from codefoundry.models.infill_eval import InfillExample, syntax_valid_fraction  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

VOCAB = 300
PROMPTS = [[5, 17, 42], [7], [100, 3, 3, 9, 250]]


def _model(vocab: int = VOCAB, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config_for_size("tiny", vocab, max_seq_len=128, init_std=0.3, **kw)).eval()


def test_greedy_takes_the_best_token_that_is_not_banned():
    model = _model()
    free = generate(model, PROMPTS, max_new_tokens=12)
    banned = sorted({t for row in free for t in row})  # every token the unbanned rows chose
    out = generate(model, PROMPTS, max_new_tokens=12, banned_ids=banned)
    for prompt, row in zip(PROMPTS, out, strict=True):
        assert row and not set(row) & set(banned)
        seq = list(prompt)  # each token: the argmax of a full forward with the banned ids masked
        with torch.no_grad():
            for token in row:
                logits = model(torch.tensor([seq])).logits[0, -1]
                logits[banned] = float("-inf")
                assert token == int(logits.argmax())
                seq.append(token)


def test_sampling_never_draws_a_banned_token():
    model = _model()
    banned = list(range(0, VOCAB, 2))  # half the vocabulary
    kw = dict(max_new_tokens=40, temperature=3.0, seed=1)
    free = generate(model, PROMPTS * 4, **kw)
    assert any(t in set(banned) for row in free for t in row)  # they would be drawn
    out = generate(model, PROMPTS * 4, banned_ids=banned, **kw)
    assert all(t % 2 == 1 for row in out for t in row) and sum(map(len, out)) == 40 * 12


def test_speculative_decoding_bans_as_plain_greedy_does():
    model = _model(mtp_depth=2)
    banned = sorted({t for row in generate(model, PROMPTS, max_new_tokens=10) for t in row})
    for prompt in PROMPTS:
        want = generate(model, [prompt], max_new_tokens=10, banned_ids=banned)[0]
        assert speculative_decode(model, prompt, max_new_tokens=10, banned_ids=banned).tokens == want
        assert generate(model, [prompt], max_new_tokens=10, banned_ids=banned, speculative=True)[0] == want


def test_banned_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"banned_ids must be token ids in \[0, 300\)"):
        generate(_model(), PROMPTS, max_new_tokens=2, banned_ids=[300])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    files = tokenizer_module.default_corpus()[:40]
    return tokenizer_module.train(files, vocab_size=512, out=tmp_path_factory.mktemp("tok"))


def _fond_of(model: Transformer, prompt: list[int], token: int) -> Transformer:
    """A copy of `model` whose favourite next token after `prompt` is `token`: its output row is made a
    multiple of the favourite's."""
    fond = copy.deepcopy(model)
    with torch.no_grad():
        best = int(fond(torch.tensor([prompt])).logits[0, -1].argmax())
        fond.lm_head.weight[token] = 4 * fond.lm_head.weight[best]
        assert int(fond(torch.tensor([prompt])).logits[0, -1].argmax()) == token
    return fond


@pytest.mark.parametrize("fim", [False, True])
def test_completions_never_write_a_fim_sentinel(tok, fim):
    prefix, suffix = "def area(w, h):\n", "\n\ndef other():\n    pass\n"
    ids = tok.encode(prefix, add_special_tokens=False).ids
    if fim:
        ids = [tokenizer_module.special_id(tok, "<|fim_prefix|>"), *ids, tok.token_to_id("<|fim_suffix|>"),
               *tok.encode(suffix, add_special_tokens=False).ids, tok.token_to_id("<|fim_middle|>")]  # fmt: skip
    sentinel = tok.token_to_id("<|fim_middle|>")
    model = _fond_of(_model(tok.get_vocab_size(), tie_embeddings=False), ids, sentinel)
    assert generate(model, [ids], max_new_tokens=1)[0] == [sentinel]  # unbanned, it is written
    text = complete(model, tok, [prefix], suffixes=[suffix if fim else None], max_new_tokens=6)[0]
    assert text and "<|fim" not in text
    assert set(ids_of(tok, FIM_BANNED if fim else PLAIN_BANNED)) >= {sentinel}
    if not fim:
        example = InfillExample(prefix=prefix, middle="    return w * h\n", suffix="", name="area")
        records: list[dict] = []
        syntax_valid_fraction(model, tok, [example], n=2, temperature=0.0, seed=0, max_new_tokens=6,
                              records=records)  # fmt: skip
        assert records and all("<|fim" not in r["body"] for r in records)
