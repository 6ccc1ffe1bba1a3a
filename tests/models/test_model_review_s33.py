"""Bugs found in the session-33 review of the model and pretraining code, each pinned by the test that
first failed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.models import completion  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.completion import complete_ids  # noqa: E402
from codefoundry.models.config import ModelConfig  # noqa: E402
from codefoundry.models.generate import decode, generate, token_bytes  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.train.pretrain import PretrainConfig  # noqa: E402
from codefoundry.train.pretrain import main as pretrain_main  # noqa: E402

TEXTS = ["def foo(bar):\n    return bar\n", "hello world café\n", "def baz(): pass\n", "x = foo(1) + bar\n"]


def _tiny(vocab: int, max_seq_len: int = 32) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=max_seq_len)
    return Transformer(cfg).eval()


# --------------------------------------------------------------------- pretrain --json: types and fields
def _config_text(**fields) -> str:
    return json.dumps({"data": "d", "tokenizer": "t", "out": "o", **fields})


def _config_file(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(_config_text(**fields))
    return path


def _json_refusal(tmp_path: Path, capsys, text: str | bytes) -> str:
    path = tmp_path / "cfg.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert pretrain_main(["--json", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: ") and err.count("\n") == 1, err
    return err


def test_pretrain_json_names_the_field_of_the_wrong_type(tmp_path, capsys):
    # "steps": "10" used to reach `self.steps >= 1`: "'>=' not supported between instances of 'str' and
    # 'int'", naming neither the field nor the file.
    err = _json_refusal(tmp_path, capsys, _config_text(steps="10"))
    assert "PretrainConfig.steps: expected int, got '10' (str)" in err


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"lr": None}, "PretrainConfig.lr: expected float, got None"),
        ({"betas": 0.9}, "PretrainConfig.betas: expected a list of 2 float, got 0.9"),
        ({"compile": "yes"}, "PretrainConfig.compile: expected bool, got 'yes'"),
        ({"seq_len": True}, "PretrainConfig.seq_len: expected int, got True"),
        ({"shape": "24,3,3,1"}, "PretrainConfig.shape: expected a list of 4 int or None"),
    ],
)
def test_pretrain_json_wrong_types_are_one_line_naming_the_field(tmp_path, capsys, fields, needle):
    err = _json_refusal(tmp_path, capsys, _config_text(**fields))
    assert needle in err


def test_pretrain_json_names_an_unknown_field(tmp_path, capsys):
    err = _json_refusal(tmp_path, capsys, _config_text(step=3))
    assert "unknown field 'step' (did you mean 'steps'?)" in err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"data": "d", "tokenizer": "t"}', "missing field 'out'"),
        ("[1, 2]", "expected a JSON object of PretrainConfig fields, got list"),
        ('{"data": "d",\n "steps": }', "not valid JSON (Expecting value at line 2, column 11)"),
        (b'{"data": "\xff"}', "not UTF-8 (byte 10)"),
        ("", "not valid JSON"),
    ],
)
def test_pretrain_json_malformed_files_are_one_line(tmp_path, capsys, text, needle):
    assert needle in _json_refusal(tmp_path, capsys, text)


def test_pretrain_json_reads_what_asdict_writes(tmp_path):
    # The kill-and-resume test writes asdict(config) as the file: tuples become lists and ints stand for
    # floats in JSON; both must still be accepted.
    from codefoundry.train.typed_config import config_from_json

    cfg = PretrainConfig(data="d", tokenizer="t", out="o", shape=(24, 3, 3, 1), lr=1, steps=7)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(asdict(cfg)))
    assert config_from_json(PretrainConfig, path) == cfg


def test_pretrain_config_from_code_names_the_field_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"^PretrainConfig\.batch_size: expected int, got 2\.0 \(float\)$"):
        PretrainConfig(data="d", tokenizer="t", out="o", batch_size=2.0)


def test_codefoundry_pretrain_json_config_refuses_a_wrong_type_in_one_line(tmp_path, capsys):
    path = _config_file(tmp_path, holdout="0.1")
    assert cli_main(["pretrain", "--json", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"codefoundry pretrain: {path}: PretrainConfig.holdout: expected float, got '0.1' (str)\n"


def test_codefoundry_pretrain_options_override_the_json_config(tmp_path, capsys):
    # The file's size is unknown, the command line's is not: the command line wins, and the run goes on to
    # the next check (the tokenizer directory "t" does not exist).
    path = _config_file(tmp_path, size="huge")
    assert cli_main(["pretrain", "--json", str(path), "--size", "tiny"]) == 2
    assert "t: no tokenizer.json" in capsys.readouterr().err


def test_codefoundry_pretrain_without_json_still_needs_data_tokenizer_and_out(capsys):
    assert cli_main(["pretrain", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert err == "codefoundry pretrain: missing --tokenizer, --out (or --json CONFIG with those fields)\n"


# ------------------------------------------------------------- complete_ids: max_new_tokens lowered
@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    return cft.train_texts(TEXTS * 10, vocab_size=300, out=tmp_path_factory.mktemp("tok"))


def test_complete_ids_says_when_max_new_tokens_is_lowered(byte_tok, capsys, monkeypatch):
    monkeypatch.setattr(completion, "_WARNED", set())
    model = _tiny(byte_tok.get_vocab_size(), max_seq_len=32)
    prompt = byte_tok.encode("def foo(bar):").ids
    complete_ids(model, byte_tok, [prompt], max_new_tokens=100)
    err = capsys.readouterr().err
    cut = 32 - len(prompt)
    assert err == (
        f"codefoundry.models: warning: max_new_tokens=100 lowered to {cut}: the model's max_seq_len is 32 "
        "tokens, prompt included\n"
    )
    complete_ids(model, byte_tok, [prompt], max_new_tokens=100)  # once per (asked, context)
    complete_ids(model, byte_tok, [prompt], max_new_tokens=cut)  # nothing lowered: nothing said
    assert capsys.readouterr().err == ""


# ----------------------------------------------------- SentencePiece-style vocabularies: token bytes
def _metaspace_tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", cft.EOT], show_progress=False)
    tok.train_from_iterator(TEXTS * 10, trainer=trainer)
    return tok


def _llama_tok():
    """A Llama-2-layout tokenizer.json: "▁" for spaces (normaliser), byte fallback pieces <0x00>..<0xFF>
    in the vocabulary, and the decoder Replace + ByteFallback + Fuse + Strip."""
    from tokenizers import Tokenizer, decoders, normalizers

    spec = json.loads(_metaspace_tok().to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    spec["model"]["byte_fallback"] = True
    spec["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


@pytest.mark.parametrize("make", [_metaspace_tok, _llama_tok])
def test_token_bytes_keep_word_initial_spaces_of_sentencepiece_pieces(make):
    # Each id was decoded alone, and a SentencePiece decoder drops the first word's space: "▁return"
    # became b"return", so a completion ran its words together. The reference is the tokenizer's own
    # decoding of the whole text: a continuation's bytes are the text after its prompt's.
    tok = make()
    table = token_bytes(tok)
    text = "def foo(bar):\n    return bar"
    ids = tok.encode(text, add_special_tokens=False).ids
    whole = tok.decode(ids)
    for k in range(1, len(ids)):
        head = tok.decode(ids[:k])
        if "\ufffd" not in head and whole.startswith(head):
            assert decode(table, ids[k:]) == whole[len(head) :], (k, [tok.id_to_token(i) for i in ids])


def test_token_bytes_read_byte_fallback_pieces_as_bytes():
    # "<0x0A>" is all printable ASCII, so it was taken for a byte-level piece: the six bytes "<0x0A>".
    # And "é" (a whole character in a SentencePiece vocabulary) was the byte-level alphabet's byte 0xE9.
    tok = _llama_tok()
    table = token_bytes(tok)
    assert table[tok.token_to_id("<0x0A>")] == b"\n"
    assert table[tok.token_to_id("é")] == "é".encode()
    ids = tok.encode("bar\tcafé").ids  # "\t" is not in the vocabulary: byte fallback
    assert "<0x09>" in [tok.id_to_token(i) for i in ids]
    assert decode(table, ids) == " bar\tcafé"


def test_byte_level_vocabulary_is_unchanged(byte_tok):
    table = token_bytes(byte_tok)
    for text in TEXTS:
        ids = byte_tok.encode(text).ids
        assert decode(table, ids) == text == byte_tok.decode(ids)


def test_stop_string_starting_with_a_space_stops_a_sentencepiece_row():
    tok = _metaspace_tok()
    model = _tiny(tok.get_vocab_size())
    word = tok.token_to_id("▁return")
    banned = [i for i in range(tok.get_vocab_size()) if i != word]  # greedy can only write "▁return"
    out = generate(model, [[tok.token_to_id("▁def")]], max_new_tokens=5, stop_strings=[" return"],
                   tokenizer=tok, banned_ids=banned)  # fmt: skip
    assert out == [[word]]  # the token completing the stop string, then the row ends


# ------------------------------------------------------------------- text that is not UTF-8
@pytest.fixture(scope="module")
def byte_ckpt(byte_tok, tmp_path_factory) -> Path:
    from codefoundry.models import checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    cft.save(byte_tok, root / "tok")
    return checkpoint.save(_tiny(byte_tok.get_vocab_size()), root / "ckpt", tokenizer=root / "tok")


def test_generate_command_names_a_prompt_with_an_undecodable_byte(byte_ckpt, capsys):
    # `--prompt $'ab\xff'` reaches Python as "ab\udcff" (surrogateescape); the tokenizer raised a bare
    # TypeError ("TextInputSequence must be str") and the command ended in a traceback.
    code = cli_main(["generate", str(byte_ckpt), "--prompt", "ab\udcff", "--no-stream"])
    err = capsys.readouterr().err
    assert code == 2 and err == (
        "codefoundry generate: --prompt: not UTF-8 text (character 2 is '\\udcff', an undecodable byte)\n"
    )


def test_complete_names_the_suffix_with_an_undecodable_byte(byte_tok):
    model = _tiny(byte_tok.get_vocab_size())
    with pytest.raises(ValueError, match=r"^complete: suffix 1: not UTF-8 text \(character 0 "):
        completion.complete(model, byte_tok, ["a", "b"], suffixes=[None, "\udce9t"], max_new_tokens=2)


def test_local_backend_names_the_prompt_and_message_with_an_undecodable_byte(byte_ckpt):
    from codefoundry.models.backends.base import SamplingParams
    from codefoundry.models.backends.local import LocalBackend

    backend = LocalBackend(str(byte_ckpt))
    with pytest.raises(ValueError, match=r": prompt 1: not UTF-8 text"):
        backend.complete(["ok", "x\udcff"], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match=r": message 0: not UTF-8 text"):
        backend.chat([[{"role": "user", "content": "\udcff"}]], SamplingParams(max_tokens=2))


# ------------------------------------------------------------ export: token ids of a Unigram vocabulary
def test_export_reads_special_token_ids_from_a_unigram_vocabulary(tmp_path):
    # A Unigram model lists [piece, score] pairs: read as a mapping, a token named in tokenizer_config.json
    # that is a piece of the model (not an added token) got its score as its id (pad_token_id -1.48).
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from codefoundry.models import hf

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=40, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(TEXTS * 10, trainer=trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "▁"}))
    ids = hf.special_token_ids(tmp_path)
    assert ids == {"bos_token_id": None, "eos_token_id": tok.token_to_id("</s>"),
                   "pad_token_id": tok.token_to_id("▁")}  # fmt: skip


# ----------------------------------------------------------- pretrain: resuming a time-budgeted run
def test_resuming_a_time_budgeted_run_does_not_say_it_changed_the_steps(byte_tok, tmp_path, capsys):
    # The checkpoint's config held the fitted step count, so a resume with the same config read as one
    # that changed `steps` ("steps=1000 (was 20): the run will not reproduce an uninterrupted one").
    from dataclasses import replace

    from codefoundry.train import budget
    from codefoundry.train.pretrain import pretrain

    (tmp_path / "data").mkdir()
    for i in range(4):
        (tmp_path / "data" / f"m{i}.py").write_text("".join(TEXTS) * 3)
    cft.save(byte_tok, tmp_path / "tok")
    cfg = PretrainConfig(
        data=str(tmp_path / "data"), tokenizer=str(tmp_path / "tok"), out=str(tmp_path / "run"), steps=1000,
        batch_size=2, seq_len=16, warmup=budget.FIT_AFTER, time_budget_s=1e-3, eval_every=0, eval_batches=1,
        log_every=100, progress=False, final_eval=False,
    )  # fmt: skip
    first = pretrain(cfg)  # the budget is spent when the steps are first timed: it ends there
    assert first["step"] == first["steps"] == budget.FIT_AFTER
    capsys.readouterr()
    assert pretrain(replace(cfg, resume=True))["steps"] == budget.FIT_AFTER  # the fitted count is kept
    assert "will not reproduce" not in capsys.readouterr().err


def test_pretrain_config_refuses_a_negative_seed_as_its_own_field():
    # Accepted here, it failed once the run had started, as "DataConfig.seed", a config no user wrote.
    with pytest.raises(ValueError, match=r"^PretrainConfig\.seed: invalid value -1$"):
        PretrainConfig(data="d", tokenizer="t", out="o", seed=-1)


# --------------------------------------------------------- import: what a config.json leaves out
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen2_moe", "mixtral"])
def test_import_fills_fields_a_config_leaves_out_as_transformers_does(model_type):
    # Llama's defaults were used for every type: a Mixtral config without rms_norm_eps and rope_theta was
    # imported with eps 1e-6 and theta 1e4, where transformers' MixtralConfig assumes 1e-5 and 1e6.
    transformers = pytest.importorskip("transformers")
    from codefoundry.models.hf_import import config_from_hf

    hf = {"model_type": model_type, "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64}  # fmt: skip
    if model_type == "qwen2_moe":
        hf.update(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16
        )
    if model_type == "mixtral":
        hf.update(num_local_experts=4, num_experts_per_tok=2)
    reference = transformers.AutoConfig.for_model(**hf)
    ours = config_from_hf(hf, where="config.json")
    theta = (getattr(reference, "rope_parameters", None) or {}).get("rope_theta")
    assert ours.norm_eps == reference.rms_norm_eps
    assert ours.rope_theta == (theta if theta is not None else reference.rope_theta)
    assert ours.max_seq_len == reference.max_position_embeddings
