"""The transformers backend against `model.generate` itself, on a tiny random Llama built by the test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from codefoundry.models.backends import SamplingParams, load_backend

# The vocabulary: every word of this "corpus", plus the special tokens.
CORPUS = "def add ( x , y ) : return x + y if else for in range print z sub the a of to and = - 0 1 2"
WORDS = sorted(set(CORPUS.split()) | {"user", "assistant", "system"})
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
MAX_NEW = 8


def _build(root: Path, *, chat_template: str | None) -> tuple[Path, Any, Any]:
    """A word-level tokenizer over WORDS and a 2-layer random Llama, saved under root."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template

    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,  # peaked logits: greedy choices are not decided by rounding noise
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = root / ("chat" if chat_template else "plain")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    return _build(tmp_path_factory.mktemp("tiny-llama"), chat_template=None)


@pytest.fixture(scope="module")
def backend(tiny: tuple[Path, Any, Any]) -> Any:
    path, _, _ = tiny
    return load_backend(f"hf:{path}", device="cpu", batch_size=2)


def _reference(model: Any, tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> str:
    """Greedy continuation straight from model.generate, new tokens only."""
    import torch

    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def test_greedy_matches_model_generate(tiny: tuple[Path, Any, Any], backend: Any) -> None:
    _, model, tokenizer = tiny
    prompt = "def add ( x , y ) : return"
    expected = _reference(model, tokenizer, prompt)
    assert expected  # the comparison means something only if something was generated
    out = backend.complete([prompt], SamplingParams(max_tokens=MAX_NEW))
    assert out == [[expected]]
    assert backend.name == f"hf:{tiny[0]}"


def test_left_padded_batches_match_one_prompt_at_a_time(tiny: tuple[Path, Any, Any], backend: Any) -> None:
    _, model, tokenizer = tiny
    prompts = ["x", "def sub ( x , y ) : return x - y", "print the", "for x in range ( 2 ) :", "if z = 0"]
    out = backend.complete(prompts, SamplingParams(max_tokens=MAX_NEW, n=2))  # batches of 2, 2, 1
    assert out == [[_reference(model, tokenizer, p)] * 2 for p in prompts]


def test_sampling_gives_n_strings_reproducible_by_seed(backend: Any) -> None:
    params = SamplingParams(n=4, temperature=1.0, max_tokens=MAX_NEW, seed=1234)
    first = backend.complete(["def", "print"], params)
    assert [len(samples) for samples in first] == [4, 4]
    assert all(isinstance(s, str) for samples in first for s in samples)
    assert len(set(first[0])) > 1  # a random model at temperature 1 does not repeat itself 4 times
    assert backend.complete(["def", "print"], params) == first
    other = backend.complete(
        ["def", "print"], SamplingParams(n=4, temperature=1.0, max_tokens=MAX_NEW, seed=99)
    )
    assert other != first


def test_stop_strings_cut(tiny: tuple[Path, Any, Any], backend: Any) -> None:
    _, model, tokenizer = tiny
    prompt = "for x in"
    full = _reference(model, tokenizer, prompt)
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    expected = full[: full.index(stop)]
    out = backend.complete([prompt], SamplingParams(max_tokens=MAX_NEW, stop=(stop, "never-generated")))
    assert out == [[expected]]


def test_chat_without_template_is_a_role_transcript(backend: Any) -> None:
    conversation = [{"role": "system", "content": "add"}, {"role": "user", "content": "x + y"}]
    params = SamplingParams(max_tokens=MAX_NEW)
    transcript = "system: add\nuser: x + y\nassistant:"
    assert backend.chat([conversation], params) == backend.complete([transcript], params)


def test_chat_uses_the_tokenizer_chat_template(tmp_path: Path) -> None:
    path, model, tokenizer = _build(tmp_path, chat_template=CHAT_TEMPLATE)
    conversation = [{"role": "user", "content": "def add"}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text == "<s>user : def add assistant :"
    expected = _reference(model, tokenizer, text, add_special_tokens=False)  # the template wrote <s>
    b = load_backend(f"hf:{path}", device="cpu")
    assert b.chat([conversation], SamplingParams(max_tokens=MAX_NEW)) == [[expected]]


def test_missing_dependency_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="pip install torch transformers"):
        load_backend("hf:/nonexistent")


def test_min_p_reaches_transformers_and_keeps_only_the_likely_tokens(backend: Any) -> None:
    """min_p 1 keeps only the most likely token (ties aside), so sampling at any temperature gives the
    greedy text; transformers' own min_p warper does the cutting."""
    greedy = backend.complete(["def", "print"], SamplingParams(max_tokens=MAX_NEW))
    hot = SamplingParams(n=3, temperature=5.0, max_tokens=MAX_NEW, seed=3, min_p=1.0)
    assert backend.complete(["def", "print"], hot) == [g * 3 for g in greedy]
    assert backend._config(hot, 3).min_p == 1.0
    assert backend._config(SamplingParams(temperature=1.0), 1).min_p == 0.0  # not the checkpoint's


def test_no_sampling_default_of_the_checkpoint_applies_unasked(
    tiny: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    """A generation_config.json with no_repeat_ngram_size 1 and an epsilon cutoff (a checkpoint's defaults)
    changed the backend's greedy and sampled texts: transformers fills every knob a call leaves unset."""
    import json
    import shutil

    path, _, _ = tiny
    tuned = Path(shutil.copytree(path, tmp_path / "tuned"))
    config = json.loads((tuned / "generation_config.json").read_text())
    config.update(no_repeat_ngram_size=1, epsilon_cutoff=0.3, top_h=0.5)
    (tuned / "generation_config.json").write_text(json.dumps(config))
    plain = load_backend(f"hf:{path}", device="cpu")
    prompts = ["def", "print the", "for x in range ( 2 ) :"]
    greedy = plain.complete(prompts, SamplingParams(max_tokens=MAX_NEW))
    assert any(len(set(text.split())) < len(text.split()) for [text] in greedy)  # some word repeats
    tuned_backend = load_backend(f"hf:{tuned}", device="cpu")
    assert tuned_backend.complete(prompts, SamplingParams(max_tokens=MAX_NEW)) == greedy
    sampled = SamplingParams(n=2, temperature=1.0, max_tokens=MAX_NEW, seed=5)
    assert tuned_backend.complete(prompts, sampled) == plain.complete(prompts, sampled)
