"""The code tokenizer: special tokens, exact round trip, compression, and loading by transformers."""

import subprocess
import sys

import pytest

tokenizers = pytest.importorskip("tokenizers")

from codefoundry.models import tokenizer as cft  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    files = cft.default_corpus()[::12]  # ~150 real standard-library files
    out = tmp_path_factory.mktemp("tok")
    tok = cft.train(files, vocab_size=2048, out=out)
    return tok, files, out


def test_special_tokens_are_single_ids_and_never_split(trained):
    tok, _, _ = trained
    ids = {t: tok.token_to_id(t) for t in cft.SPECIAL_TOKENS}
    assert all(i is not None for i in ids.values()) and len(set(ids.values())) == len(ids)
    text = f"{cft.FIM_PREFIX}def f(x):\n{cft.FIM_SUFFIX}    return x\n{cft.FIM_MIDDLE}"
    enc = tok.encode(text, add_special_tokens=False).ids
    assert enc[0] == ids[cft.FIM_PREFIX] and enc[-1] == ids[cft.FIM_MIDDLE] and ids[cft.FIM_SUFFIX] in enc


def test_round_trip_is_exact_on_every_training_file(trained):
    tok, files, _ = trained
    assert cft.round_trip_failures(tok, files) == []
    tricky = "\tif x:\r\n        y = '\u00e9\u4e2d\U0001f600'  \n\n\n    \t# trailing spaces   \n"
    assert tok.decode(tok.encode(tricky).ids) == tricky


def test_compression_and_indentation_merges(trained):
    tok, files, _ = trained
    assert cft.bytes_per_token(tok, cft.read_texts(files)) > 2.5
    # runs of indentation are learned as single tokens
    assert len(tok.encode("        return", add_special_tokens=False).ids) <= 3


def test_transformers_loads_it_with_the_same_ids(trained):
    transformers = pytest.importorskip("transformers")
    tok, files, out = trained
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    text = files[0].read_text(encoding="utf-8")[:2000]
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False).ids
    assert hf.eos_token == cft.EOT and hf.decode(hf(text)["input_ids"]) == text
    chat = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == f"{cft.IM_START}user\nhi{cft.IM_END}\n{cft.IM_START}assistant\n"


def test_cli_train_and_bad_input(tmp_path):
    data = tmp_path / "src"
    data.mkdir()
    for i in range(20):
        (data / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i}\n" * 30)
    out = tmp_path / "tok"
    cli = [sys.executable, "-m", "codefoundry.cli", "tokenizer", "train"]
    proc = subprocess.run([*cli, "--data", str(data), "--vocab-size", "400", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "trained on 20 files" in proc.stdout and (out / "tokenizer.json").exists()
    bad = subprocess.run(
        [*cli, "--data", str(tmp_path / "nope"), "--out", str(out)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_round_trip_on_the_whole_standard_library(tmp_path):
    files = cft.default_corpus()
    tok = cft.train(files, vocab_size=8192, out=tmp_path)
    assert cft.round_trip_failures(tok, files) == []


def test_line_ends_are_kept_as_the_file_has_them(trained, tmp_path):
    # Files were read with universal newlines: a CRLF file trained as an LF one, and its round trip was
    # checked on the translated text, so it passed whatever the tokenizer did with "\r".
    tok, _, _ = trained
    raw = b"def f(x):\r\n    return x\r\n\rold_mac = 1\r\n"
    path = tmp_path / "crlf.py"
    path.write_bytes(raw)
    assert list(cft.read_texts([path])) == [raw.decode()]
    assert cft.round_trip_failures(tok, [path]) == []
    assert tok.decode(tok.encode(raw.decode()).ids).encode() == raw
