"""Generation options and text handling.

`generate(repetition_penalty=)` against a plain recomputation: a full forward per step, the logits of the
tokens the row has generated (not its prompt's) divided by the penalty where positive and multiplied where
negative, then argmax. Padded and unpadded batches, rows that end early (the batch is compacted), sampling,
recorded log-probs, and the refusals. Also: seeds of any size, control-token text around a FIM middle kept as
text, and a model whose vocabulary is padded past its tokenizer's."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from codefoundry.models import completion  # noqa: E402
from codefoundry.models import tokenizer as tokenizer_module  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.tokenizer import EOT, FIM_MIDDLE, special_id  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

VOCAB = 64  # small, so that a row soon draws tokens again and the penalty decides choices


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config_for_size("tiny", VOCAB, max_seq_len=96, init_std=0.3, **kw)).eval()


def _prompts(lengths=(1, 6, 11, 4)) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _penalised(logits: torch.Tensor, tokens, factor: float) -> torch.Tensor:
    logits = logits.clone()
    for t in set(tokens):
        logits[t] = logits[t] / factor if logits[t] > 0 else logits[t] * factor
    return logits


def _reference(model, prompt, n, factor, *, stop=None, count_prompt=False) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            token = int(_penalised(logits, seq if count_prompt else seq[len(prompt) :], factor).argmax())
            if token == stop:
                break
            seq.append(token)
    return seq[len(prompt) :]


@pytest.mark.parametrize("factor", [1.3, 0.7])
@pytest.mark.parametrize("lengths", [(1, 6, 11, 4), (5, 5, 5)])
def test_greedy_with_a_penalty_equals_the_recomputation(factor, lengths):
    model, prompts = _model(), _prompts(lengths)
    out = generate(model, prompts, max_new_tokens=24, repetition_penalty=factor)
    assert out == [_reference(model, p, 24, factor) for p in prompts]
    # The test can tell the semantics apart: without a penalty, or counting the prompt, rows differ.
    assert out != generate(model, prompts, max_new_tokens=24)
    assert out != [_reference(model, p, 24, factor, count_prompt=True) for p in prompts]


def test_rows_that_end_early_leave_the_others_penalised_as_before():
    # A stop id ends row 0 after a few tokens, so the batch drops it and the penalty's rows move with it.
    model, prompts = _model(), _prompts()
    full = generate(model, prompts, max_new_tokens=24, repetition_penalty=1.5)
    stop = next(t for i, t in enumerate(full[0]) if i >= 2 and t not in full[0][:i])
    out = generate(model, prompts, max_new_tokens=24, repetition_penalty=1.5, stop_ids=[stop])
    want = [_reference(model, p, 24, 1.5, stop=stop) for p in prompts]
    assert out == want and len(out[0]) < 24 and max(map(len, out)) == 24


def test_the_penalty_applies_before_sampling_and_leaves_recorded_log_probs_the_models():
    # At a tiny temperature sampling is argmax of the penalised logits; the recorded log-probs stay those of
    # the model's own logits, which is what an RL learner recomputes.
    model, prompts = _model(), _prompts()
    logprobs: list[list[float]] = []
    out = generate(model, prompts, max_new_tokens=16, temperature=1e-3, seed=0, repetition_penalty=1.5,
                   logprobs=logprobs)  # fmt: skip
    assert out == [_reference(model, p, 16, 1.5) for p in prompts]
    with torch.no_grad():
        for prompt, new, got in zip(prompts, out, logprobs, strict=True):
            logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1 : -1] / 1e-3
            want = logits.log_softmax(-1).gather(1, torch.tensor(new)[:, None]).squeeze(1)
            assert torch.allclose(torch.tensor(got), want, atol=1e-2)
    a = generate(model, prompts, max_new_tokens=16, temperature=0.9, seed=5, repetition_penalty=1.2)
    assert a == generate(model, prompts, max_new_tokens=16, temperature=0.9, seed=5, repetition_penalty=1.2)
    assert a != generate(model, prompts, max_new_tokens=16, temperature=0.9, seed=5)


def test_any_integer_seeds_sampling():
    # A nanosecond timestamp as --seed: complete() derives seed * 1_000_003 + batch, past 64 bits.
    model, prompts = _model(), _prompts()
    big = 1_700_000_000_000_000_000 * 1_000_003
    out = generate(model, prompts, max_new_tokens=8, temperature=0.9, seed=big)
    assert out == generate(model, prompts, max_new_tokens=8, temperature=0.9, seed=big % 2**64)
    assert generate(model, prompts, max_new_tokens=8, temperature=0.9, seed=-1) == generate(
        model, prompts, max_new_tokens=8, temperature=0.9, seed=2**64 - 1
    )


def test_a_penalty_of_one_is_no_penalty():
    model, prompts = _model(), _prompts()
    assert generate(model, prompts, max_new_tokens=16, repetition_penalty=1.0) == generate(
        model, prompts, max_new_tokens=16
    )


@pytest.mark.parametrize("factor", [0.0, -1.2, float("nan"), float("inf")])
def test_bad_penalties_are_refused(factor):
    with pytest.raises(ValueError, match="repetition_penalty must be a finite number > 0"):
        generate(_model(), [[1, 2]], max_new_tokens=4, repetition_penalty=factor)


def test_speculative_decoding_refuses_a_penalty():
    with pytest.raises(ValueError, match="no repetition_penalty"):
        generate(_model(mtp_depth=1), [[1, 2]], max_new_tokens=4, speculative=True, repetition_penalty=1.2)


def test_the_command_line_refuses_a_bad_penalty_before_loading_also_run_as_a_module():
    # `python -m codefoundry.cli` is how torchrun starts the command; a usage error raised in a stage module
    # used to escape as a traceback there (the module ran as __main__, a second copy of UsageError).
    done = subprocess.run(
        [sys.executable, "-m", "codefoundry.cli", "generate", "no-such-checkpoint", "--prompt", "x",
         "--repetition-penalty", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--repetition-penalty must be a finite number > 0, got 0.0" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    files = tokenizer_module.default_corpus()[:40]
    return tokenizer_module.train(files, vocab_size=512, out=tmp_path_factory.mktemp("tok"))


def test_control_token_text_around_a_fim_middle_is_encoded_as_text(tok, monkeypatch):
    # The code around a middle is a document's text: its "<|fim_middle|>" used to break the FIM layout.
    eot, middle = special_id(tok, EOT), special_id(tok, FIM_MIDDLE)
    ids, _ = completion._fim_ids(tok, "s = '<|fim_middle|>'\n", "t = '<|endoftext|>'\n")
    assert ids.count(middle) == 1 and ids[-1] == middle and eot not in ids  # the layout's own sentinel only
    seen = []
    monkeypatch.setattr(completion, "generate", lambda model, prompts, **kw: seen.extend(prompts) or [[]])
    model = Transformer(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=64))
    completion.complete(model, tok, ["x = '<|endoftext|>'"], suffixes=["y = 1\n"], max_new_tokens=4)
    assert eot not in seen[0] and seen[0].count(middle) == 1
    # A plain prompt is read as Hugging Face tokenizers and vLLM read one: special-token text is the token.
    completion.complete(model, tok, ["x = '<|endoftext|>'"], max_new_tokens=4)
    assert eot in seen[1]


def test_ids_past_the_tokenizers_vocabulary_are_never_drawn(tok):
    # An imported checkpoint's embedding is often padded past its tokenizer. Here only the padding rows of
    # the head are non-zero, so an unrestricted draw would pick one nearly every time and fail to decode.
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", vocab + 64, max_seq_len=64, tie_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight[:vocab] = 0
        model.lm_head.weight[vocab:].normal_(0, 1.0)
    texts = completion.complete(model, tok, ["def f(x):\n"] * 4, max_new_tokens=12, temperature=1.0, seed=0)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    ids = generate(model, [[1, 2]] * 8, max_new_tokens=4, temperature=1.0, seed=0)
    assert any(i >= vocab for row in ids for i in row)  # what the ban prevents
