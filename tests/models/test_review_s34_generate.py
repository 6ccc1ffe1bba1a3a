"""Bugs found in the session-34 review of generation, completion and the `generate` command, each pinned by
the test that first failed, and the adversarial cases the review checked that already held (streamed text
with characters split across tokens and stop strings, speculative decoding against greedy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.models import checkpoint  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.completion import complete, complete_ids, generate_command  # noqa: E402
from codefoundry.models.config import ModelConfig, config_for_size  # noqa: E402
from codefoundry.models.generate import decode, generate, token_bytes  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

TEXTS = ["def foo(bar):\n    return bar\n", "hello world café\n", "def baz(): pass\n", "x = foo(1) + bar\n"]


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    return cft.train_texts(TEXTS * 10, vocab_size=300, out=tmp_path_factory.mktemp("tok"))


def _random(vocab: int = 300, **kw) -> Transformer:
    torch.manual_seed(0)
    kw.setdefault("init_std", 0.3)  # spread logits: greedy choices are not decided by rounding
    return Transformer(config_for_size("tiny", vocab, max_seq_len=64, **kw)).eval()


def _scripted(vocab: int, chain: dict[int, int], *, mtp_depth: int = 0) -> Transformer:
    """A model whose greedy next token after token t is chain[t] (0 after any other token): the blocks
    add nothing to the residual stream, so the logits are the head applied to the last token's embedding,
    and each chained token has its own embedding direction."""
    cfg = ModelConfig(vocab_size=vocab, dim=64, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64,
                      tie_embeddings=False, mtp_depth=mtp_depth)  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.out.weight.zero_()
            layer.mlp.down.weight.zero_()
        model.embed.weight.zero_()
        model.lm_head.weight.zero_()
        for slot, (t, nxt) in enumerate(chain.items()):
            model.embed.weight[t, slot] = 1.0
            model.lm_head.weight[nxt, slot] = 10.0
    return model


def _chain(ids: list[int]) -> dict[int, int]:
    chain = dict(zip(ids, ids[1:], strict=False))
    assert len(chain) == len(ids) - 1, "a scripted sequence must not repeat a token"
    return chain


# ----------------------------------------------------------------------- sampling at a tiny temperature
@pytest.mark.parametrize("temperature", [1e-38, 1e-300])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_tiny_temperature_samples_the_greedy_tokens(temperature, top_p):
    # logits / 1e-38 overflowed to +-inf in fp32, the softmax was NaN, and the inverse-CDF draw returned
    # the id one past the vocabulary: an IndexError in the embedding instead of (near-)greedy tokens.
    model = _random()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    greedy = generate(model, prompts, max_new_tokens=6)
    got = generate(model, prompts, max_new_tokens=6, temperature=temperature, top_p=top_p, seed=0)
    assert got == greedy


def test_log_probs_at_a_tiny_temperature_are_those_of_a_certain_token():
    model = _random()
    logprobs: list[list[float]] = []
    generate(model, [[1, 2, 3]], max_new_tokens=4, temperature=1e-38, seed=0, logprobs=logprobs)
    assert logprobs[0] == [0.0] * 4


# ------------------------------------------------------- ids past the tokenizer's vocabulary, as text
def _padded_model(byte_tok) -> tuple[Transformer, list[int]]:
    vocab = byte_tok.get_vocab_size()
    model = Transformer(ModelConfig(vocab_size=vocab + 8, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    max_seq_len=32)).eval()  # fmt: skip
    return model, list(range(vocab))  # banning the tokenizer's ids leaves only the padding ones


def test_stop_strings_do_not_crash_on_an_id_past_the_tokenizers_vocabulary(byte_tok):
    # An imported checkpoint's embedding is often padded past its tokenizer (Qwen2.5: 151,936 rows for
    # 151,665 tokens). `generate` with stop strings (the RL rollout's call) looked each new id up in the
    # tokenizer's byte table: an IndexError the first time a padding id was sampled.
    model, banned = _padded_model(byte_tok)
    out = generate(model, [[1, 2]], max_new_tokens=3, stop_strings=["x"], tokenizer=byte_tok,
                   banned_ids=banned)  # fmt: skip
    assert len(out[0]) == 3 and min(out[0]) >= byte_tok.get_vocab_size()


def test_ids_past_the_tokenizers_vocabulary_decode_to_no_text(byte_tok):
    table = token_bytes(byte_tok)
    ids = byte_tok.encode("def foo").ids
    assert decode(table, [*ids, len(table), len(table) + 5]) == "def foo"


# ------------------------------------------ completion with a tokenizer that lacks our special tokens
def _llama_style_tok():
    """A SentencePiece-style tokenizer with Llama 2's special tokens (<unk>, <s>, </s>) and none of ours."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(TEXTS * 10, trainer=trainer)
    return tok


def test_plain_completion_runs_with_a_tokenizer_without_our_end_tokens():
    # An imported Llama checkpoint's tokenizer has no <|endoftext|> or <|file_sep|>: `complete` (and so
    # `codefoundry generate` and the cf: backend) refused to run at all, though a plain prompt needs
    # neither.
    tok = _llama_style_tok()
    model = _random(tok.get_vocab_size())
    texts = complete(model, tok, ["def foo"], max_new_tokens=4)
    assert len(texts) == 1 and isinstance(texts[0], str)


def _llama_style_ckpt(root: Path, tok, model: Transformer) -> Path:
    tok_dir = root / "tok"
    tok_dir.mkdir(parents=True)
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return checkpoint.save(model, root / "ckpt", tokenizer=tok_dir)


def test_generate_command_ends_the_text_at_the_checkpoints_eos_token(tmp_path):
    # With no <|endoftext|> to stop at, the text ran on past the model's own end of sequence ("</s>",
    # named by tokenizer_config.json) until max_tokens.
    tok = _llama_style_tok()
    words = [tok.token_to_id(w) for w in ("▁def", "▁hello", "▁world")]
    eos = tok.token_to_id("</s>")
    model = _scripted(tok.get_vocab_size(), _chain([*words, eos, tok.token_to_id("▁return")]))
    ckpt = _llama_style_ckpt(tmp_path, tok, model)
    text = generate_command(str(ckpt), "def", None, 10, 0.0, 1.0, None, False)
    assert text == " hello world"


def test_fill_in_the_middle_without_sentinels_says_what_needs_them(tmp_path, capsys):
    tok = _llama_style_tok()
    ckpt = _llama_style_ckpt(tmp_path, tok, _random(tok.get_vocab_size()))
    code = cli_main(["generate", str(ckpt), "--prompt", "def", "--suffix", "", "--max-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "<|fim_prefix|>" in err and "fill-in-the-middle" in err


# ------------------------------------------------ what already held: streaming, stops, speculative
def _spelled(byte_tok, text: str) -> tuple[Transformer, list[int], list[int]]:
    """A scripted model that writes `text` one byte-level token per byte after the prompt "def"."""
    table = token_bytes(byte_tok)
    ids = [table.index(bytes([b])) for b in text.encode()]
    start = byte_tok.token_to_id("def")
    return _scripted(byte_tok.get_vocab_size(), _chain([start, *ids])), [start], ids


@pytest.mark.parametrize("stop", [None, "x", "é", "€", "😀", "é€", "yz", "z"])
def test_streamed_pieces_of_split_characters_add_up_to_the_text_cut_at_the_stop(byte_tok, stop):
    text = "xé€😀yz"
    model, prompt, ids = _spelled(byte_tok, text)
    pieces: list[tuple[int, str]] = []
    stops = [stop] if stop else []
    out = complete_ids(model, byte_tok, [prompt], max_new_tokens=len(ids), stop=stops,
                       on_text=lambda row, piece: pieces.append((row, piece)))  # fmt: skip
    want = text[: text.find(stop)] if stop else text
    assert out == [want] and "".join(p for _, p in pieces) == want
    assert all(p and "\ufffd" not in p and row == 0 for row, p in pieces)


def test_speculative_decoding_equals_greedy_with_stops_and_every_length():
    for depth in (1, 3):
        model = _random(mtp_depth=depth, moe_experts=4)
        prompt = [5, 17, 99, 3]
        full = generate(model, [prompt], max_new_tokens=16)[0]
        for n in (1, 2, 5, 16):
            assert generate(model, [prompt], max_new_tokens=n, speculative=True)[0] == full[:n]
        stop = [full[7]]
        assert generate(model, [prompt], max_new_tokens=16, stop_ids=stop, speculative=True) == generate(
            model, [prompt], max_new_tokens=16, stop_ids=stop
        )


def test_the_local_backend_completes_with_an_imported_tokenizer_and_says_chat_needs_its_tokens(tmp_path):
    # `cf:CKPT` required <|endoftext|>, <|file_sep|>, <|im_start|> and <|im_end|> when it loaded, so an
    # imported Llama checkpoint could not even complete a prompt.
    from codefoundry.models.backends.base import BackendError, SamplingParams
    from codefoundry.models.backends.local import LocalBackend

    tok = _llama_style_tok()
    words = [tok.token_to_id(w) for w in ("▁def", "▁hello", "▁world")]
    model = _scripted(
        tok.get_vocab_size(), _chain([*words, tok.token_to_id("</s>"), tok.token_to_id("▁return")])
    )
    backend = LocalBackend(str(_llama_style_ckpt(tmp_path, tok, model)))
    assert backend.complete(["def"], SamplingParams(max_tokens=8)) == [[" hello world"]]
    with pytest.raises(BackendError, match=r"no <\|im_start\|> token, which chat needs"):
        backend.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=2))


def test_re_exporting_without_a_tokenizer_leaves_none_of_the_earlier_exports(tmp_path, byte_tok):
    # Exporting into an earlier export's directory is allowed; its tokenizer files stayed, and the report
    # said `tokenizer: True` for a model exported without one (and, for a checkpoint without
    # special_tokens_map.json, the old map sat beside the new tokenizer).
    from codefoundry.models.hf import export_hf

    model = Transformer(ModelConfig(vocab_size=byte_tok.get_vocab_size(), dim=32, n_layers=1, n_heads=2,
                                    n_kv_heads=1, max_seq_len=32))  # fmt: skip
    cft.save(byte_tok, tmp_path / "tok")
    export_hf(checkpoint.save(model, tmp_path / "with", tokenizer=tmp_path / "tok"), tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    report = export_hf(checkpoint.save(model, tmp_path / "without"), tmp_path / "hf")
    assert report["tokenizer"] is False
    assert not [n for n in checkpoint.TOKENIZER_FILES if (tmp_path / "hf" / n).exists()]


def test_prompt_healing_and_the_body_watcher_take_ids_past_the_vocabulary(byte_tok):
    from codefoundry.models.generate import heal_prompts
    from codefoundry.models.infill_eval import _BodyEnd

    table = token_bytes(byte_tok)
    prompts, firsts, skips = heal_prompts([[1, len(table) + 3]], table)
    assert prompts == [[1, len(table) + 3]] and firsts == [None] and skips == [0]
    watcher = _BodyEnd(table, 0, 0)
    assert watcher.push(len(table) + 1) is False and watcher.text == b""
