"""Bugs found in the session-34 review of the code tokenizer and `codefoundry tokenizer train`, each pinned by
the test that first failed, and adversarial corpora the review checked that already held (line ends, BOMs,
NUL bytes, form feeds, special-token text inside files, determinism, loading in transformers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402

CODE = "def f{i}(x):\n    if x:\n\treturn x * {i}  # note\n    return None\n"


def _corpus(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"m{i}.py").write_text(CODE.format(i=i) * 8)
    return root


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    cft.train_texts([CODE.format(i=i) * 8 for i in range(12)], vocab_size=400, out=out)
    return out


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(["tokenizer", "train", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- bugs ----------------------------------------------------------------------------------------------


def test_compression_counts_special_token_text_as_documents_encode_it(tok_dir):
    # Documents are encoded with special-token text as plain text (`plain_text_copy`); the report counted
    # each literal "<|endoftext|>" as one control token: 13 bytes per token for this text.
    tok = cft.load(tok_dir)
    text = f"s = '{cft.EOT}'\n" * 50
    plain = len(cft.plain_text_copy(tok).encode(text).ids)
    assert cft.bytes_per_token(tok, [text]) == pytest.approx(len(text.encode()) / plain)


@pytest.mark.parametrize("flag,value", [("--vocab-size", 1 << 31), ("--vocab-size", 10**20),
                                        ("--min-frequency", 10**20)])  # fmt: skip
def test_cli_refuses_an_absurd_size_in_one_line(tmp_path, flag, value):
    # 2**31 made the trainer reserve 141 GB and abort (no message, exit 134); 10**20 an OverflowError.
    data = _corpus(tmp_path / "src", 2)
    proc = subprocess.run(
        [sys.executable, "-m", "codefoundry.cli", "tokenizer", "train", "--data", str(data), flag, str(value),
         "--out", str(tmp_path / "tok")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-400:]
    assert len(proc.stderr.strip().splitlines()) == 1 and flag[2:].replace("-", "_") in proc.stderr


def test_a_run_without_spaces_is_cut_into_bounded_pre_tokens(tok_dir):
    # A pre-token is one BPE "word", and the trainer's merges within a word cost its length squared: a
    # 2 MB run of "A" (base64 of zeros, a long rule of '#') did not finish training in 5 minutes.
    tok = cft.load(tok_dir)
    for run in ("A" * 5000, "#" * 5000, " " * 5000 + "x", "\n" * 5000, "é" * 3000):
        pieces = tok.pre_tokenizer.pre_tokenize_str(run)
        assert max(len(p) for p, _ in pieces) <= cft.MAX_PRE_TOKEN_BYTES
        assert tok.decode(tok.encode(run).ids) == run


def test_training_on_a_long_run_keeps_the_round_trip_and_transformers_agree(tmp_path):
    transformers = pytest.importorskip("transformers")
    texts = [CODE.format(i=i) for i in range(5)] + ["DATA = b'" + "A" * 20000 + "'\n"]
    out = tmp_path / "tok"
    tok = cft.train_texts(texts, vocab_size=400, out=out)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    for text in texts:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text and hf(text)["input_ids"] == ids


def test_cli_out_that_cannot_be_written_fails_in_one_line(tmp_path, capsys):
    data = _corpus(tmp_path / "src", 2)
    out = tmp_path / "tok"
    (out / "tokenizer.json").mkdir(parents=True)  # in the way of the rename
    (out / "tokenizer.json" / "keep").write_text("x")
    rc, _, err = _cli(["--data", str(data), "--vocab-size", "300", "--out", str(out)], capsys)
    assert rc == 2 and "tokenizer.json" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_to_replace_a_model_checkpoints_tokenizer(tmp_path, capsys, tok_dir):
    # Training into a checkpoint directory silently replaced the tokenizer its model was trained with.
    data = _corpus(tmp_path / "src", 2)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / "config.json").write_text("{}")
    before = (tok_dir / "tokenizer.json").read_bytes()
    (ckpt / "tokenizer.json").write_bytes(before)
    rc, _, err = _cli(["--data", str(data), "--vocab-size", "300", "--out", str(ckpt)], capsys)
    assert rc == 2 and "model" in err and str(ckpt) in err
    assert (ckpt / "tokenizer.json").read_bytes() == before


def test_cli_says_how_many_files_were_skipped(tmp_path, capsys):
    data = _corpus(tmp_path / "src", 3)
    (data / "latin1.py").write_bytes(b"# caf\xe9\nx = 1\n")
    rc, out, _ = _cli(["--data", str(data), "--vocab-size", "300", "--out", str(tmp_path / "tok")], capsys)
    assert rc == 0 and "trained on 3 files" in out and "1 skipped" in out


@pytest.mark.parametrize("flag", ["--out", "--data"])
def test_cli_refuses_an_empty_path(tmp_path, capsys, monkeypatch, flag):
    # `--out "$OUT"` with OUT unset wrote the tokenizer into the working directory.
    data = _corpus(tmp_path / "src", 2)
    monkeypatch.chdir(tmp_path)
    args = {"--data": str(data), "--out": str(tmp_path / "tok"), flag: ""}
    rc, _, err = _cli([*(x for kv in args.items() for x in kv), "--vocab-size", "300"], capsys)
    assert rc == 2 and flag in err and not (tmp_path / "tokenizer.json").exists()


# --- adversarial corpora that held ----------------------------------------------------------------------


def test_every_awkward_file_round_trips_byte_for_byte(tmp_path):
    raw = {
        "crlf.py": b"def f():\r\n    return 1\r\n",
        "cr.py": b"a = 1\rb = 2\r",
        "mixed.py": b"if x:\n\tif y:\n        z = '\t'\x0c\n\x0b\x1c",
        "bom.py": b"\xef\xbb\xbfprint('hi')\n",
        "nul.py": b"x = '\x00\x00'\n\x00",
        "empty.py": b"",
        "special.py": f"s = '{cft.FIM_PREFIX}{cft.EOT}'\n".encode(),
        "unicode.py": "λ = '中文 😀 \u2028 \u00a0'\n".encode(),
    }
    for name, data in raw.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "bad.py").write_bytes(b"\xff\xfe x\n")
    files = cft.corpus_files(tmp_path)
    skipped: list[Path] = []
    texts = list(cft.read_texts(files, skipped=skipped))
    assert skipped == [tmp_path / "bad.py"] and [t.encode() for t in texts] == [raw[p.name] for p in files
                                                                               if p.name != "bad.py"]  # fmt: skip
    tok = cft.train_texts(texts * 5, vocab_size=320, out=tmp_path / "tok")
    assert cft.round_trip_failures(tok, files) == []


def test_round_trip_check_passes_on_special_token_text(tok_dir, tmp_path):
    tok = cft.load(tok_dir)
    path = tmp_path / "forge.py"
    path.write_text(f"END = '{cft.EOT}{cft.IM_START}'\n")
    assert cft.round_trip_failures(tok, [path]) == []


def test_special_token_text_in_the_corpus_is_not_learned_as_the_control_token(tok_dir):
    tok = cft.plain_text_copy(cft.load(tok_dir))
    ids = tok.encode(f"x = '{cft.EOT}'").ids
    assert cft.special_id(tok, cft.EOT) not in ids


def test_same_corpus_and_options_give_the_identical_files(tmp_path, capsys):
    data = _corpus(tmp_path / "src")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert _cli(["--data", str(data), "--vocab-size", "320", "--out", str(out)], capsys)[0] == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_transformers_sees_the_documented_special_tokens(tok_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    assert (hf.eos_token, hf.pad_token, hf.bos_token) == (cft.EOT, cft.FIM_PAD, None)
    assert set(hf.all_special_tokens) == set(cft.SPECIAL_TOKENS)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == cft.EOT


def test_cli_errors_for_bad_data_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "x.py").write_bytes(b"\xff\n")
    (tmp_path / "a_file").write_text("x")
    cases = [(empty, "no source files"), (tmp_path / "nope", "no such"), (tmp_path / "only_bad", "UTF-8")]
    for data, words in cases:
        rc, _, err = _cli(["--data", str(data), "--out", str(tmp_path / "o")], capsys)
        assert rc == 2 and words in err and str(data) in err and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(
        ["--data", str(_corpus(tmp_path / "s", 1)), "--vocab-size", "100", "--out", "o"], capsys
    )
    assert rc == 2 and "vocab_size" in err
    rc, _, err = _cli(["--data", str(tmp_path / "s"), "--out", str(tmp_path / "a_file")], capsys)
    assert rc == 2 and "is a file" in err


@pytest.mark.skipif(not Path("/proc/sys").is_dir(), reason="needs Linux's /proc/sys (no new files there)")
def test_cli_out_without_write_access_fails_before_training(tmp_path, capsys):
    data = _corpus(tmp_path / "src", 2)
    rc, out, err = _cli(["--data", str(data), "--vocab-size", "300", "--out", "/proc/sys"], capsys)
    assert rc == 2 and "/proc/sys: cannot write there" in err and not out


def test_a_save_that_tokenizers_cannot_write_is_an_oserror_naming_the_file(tok_dir, tmp_path):
    # tokenizers raises a bare Exception ("Is a directory (os error 21)"), which the command let through.
    (tmp_path / "tokenizer.json.tmp").mkdir()
    with pytest.raises(OSError) as e:
        cft.save(cft.load(tok_dir), tmp_path)
    assert e.value.filename == str(tmp_path / "tokenizer.json.tmp")


def test_the_command_checks_the_round_trip_of_every_corpus_file(tmp_path, capsys):
    # The command measured compression only: a tokenizer that lost text would have been saved silently.
    rc, out, _ = _cli(["--data", str(_corpus(tmp_path / "data")), "--vocab-size", "400", "--out",
                       str(tmp_path / "tok")], capsys)  # fmt: skip
    assert rc == 0 and "12 files" in out and "every one decodes back exactly" in out, out


def test_measure_names_the_files_a_lossy_tokenizer_does_not_give_back(tmp_path):
    from tokenizers import normalizers

    tok = cft.train_texts([CODE.format(i=i) * 8 for i in range(12)], vocab_size=400, out=tmp_path / "tok")
    tok.normalizer = normalizers.Lowercase()  # loses the case of every letter
    upper, lower = tmp_path / "Upper.py", tmp_path / "lower.py"
    upper.write_text("X = 1\n")
    lower.write_text("x = 1\n")
    per_token, failures = cft.measure(tok, [upper, lower])
    assert failures == [str(upper)] and per_token > 1
    assert per_token == pytest.approx(cft.bytes_per_token(tok, ["X = 1\n", "x = 1\n"]))
