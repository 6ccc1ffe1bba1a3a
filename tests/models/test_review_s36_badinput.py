"""Bad input to `codefoundry generate` and `codefoundry export hf`: another model's (larger) tokenizer in a
checkpoint, a tokenizer.json that is JSON but not a tokenizer, a special token that is not a string, an
export killed before its config.json was written, and a reader of `generate`'s output that leaves early.
Each refusal is one line on stderr naming the file and what is wrong, exit status 2, no traceback, and
nothing written; run through `codefoundry.cli.main` in-process (a subprocess where the exit matters)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from codefoundry.cli import main  # noqa: E402
from codefoundry.models import checkpoint  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.config import ModelConfig  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402


def source(i: int) -> str:
    return "".join(
        f"def g{i}_{j}(a, b):\n    c = a * b + {j}\n    return c // {i + 1}\n\n" for j in range(10)
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """ckpt/ (a tiny model with a 280-token tokenizer) and big/ (a 340-token tokenizer of the same text)."""
    root = tmp_path_factory.mktemp("s36_models")
    texts = [source(i) for i in range(6)]
    small = cft.train_texts(texts, vocab_size=280, out=root / "tok")
    big = cft.train_texts(texts, vocab_size=340, out=root / "big")
    assert big.get_vocab_size() > small.get_vocab_size()
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=small.get_vocab_size(), dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64
    )
    checkpoint.save(Transformer(cfg).eval(), root / "ckpt", tokenizer=root / "tok")
    return {"ckpt": root / "ckpt", "big": root / "big", "text": texts[0], "vocab": small.get_vocab_size()}


@pytest.fixture
def ckpt(built, tmp_path) -> Path:
    return Path(shutil.copytree(built["ckpt"], tmp_path / "ckpt"))


def refused(capsys, argv: list[object], where: Path, needle: str) -> None:
    """`codefoundry ARGV` exits 2 with the one line `codefoundry STAGE: WHERE: ...NEEDLE...`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"codefoundry {argv[0]}: {where}: ") and err.count("\n") == 1, err
    assert needle in err, err


def with_big_tokenizer(ckpt: Path, big: Path) -> int:
    for name in checkpoint.TOKENIZER_FILES:
        shutil.copyfile(big / name, ckpt / name)
    return cft.load(big).get_vocab_size()


def test_generate_names_a_tokenizer_larger_than_the_model(built, ckpt, capsys):
    """Was "codefoundry generate: generate: prompt 0 has a token id outside [0, 280)", naming no file, and
    only for prompts that happened to hold such an id."""
    top = with_big_tokenizer(ckpt, built["big"]) - 1
    needle = f"has token id {top}, but config.json says vocab_size {built['vocab']}"
    argv = ["generate", ckpt, "--prompt", built["text"][:60], "--max-tokens", 2]
    refused(capsys, argv, ckpt / "tokenizer.json", needle)


def test_export_refuses_a_tokenizer_larger_than_the_model(built, ckpt, tmp_path, capsys):
    """Was exported: transformers then indexes past the embedding for the tokenizer's last ids."""
    with_big_tokenizer(ckpt, built["big"])
    needle = f"vocab_size {built['vocab']}: the tokenizer is not this model's"
    refused(capsys, ["export", "hf", ckpt, tmp_path / "hf"], ckpt / "tokenizer.json", needle)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("tokenizer_json", "needle"),
    [
        ({"model": "BPE"}, "model.vocab is not a map of tokens to integer ids"),  # was AttributeError
        (
            {"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1}]},
            "added_tokens is not a list",
        ),  # KeyError
        ({"added_tokens": 7}, "added_tokens is not a list"),  # was TypeError
    ],
)
def test_export_of_a_json_tokenizer_that_is_not_a_tokenizer(ckpt, tmp_path, capsys, tokenizer_json, needle):
    (ckpt / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    refused(capsys, ["export", "hf", ckpt, tmp_path / "hf"], ckpt / "tokenizer.json", needle)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("stage", ["export", "generate"])
def test_a_special_token_that_is_a_list_is_one_line(ckpt, tmp_path, capsys, stage):
    (ckpt / "special_tokens_map.json").unlink()
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"eos_token": ["<|endoftext|>"]}))
    argv = (
        ["export", "hf", ckpt, tmp_path / "hf"] if stage == "export" else ["generate", ckpt, "--prompt", "x"]
    )
    # was TypeError: unhashable type: 'list'
    refused(capsys, argv, ckpt / "tokenizer_config.json", "eos_token must be a token string or null")


@pytest.mark.parametrize("left", ["no config.json", "a torn config.json"])
def test_an_export_killed_before_its_config_is_replaced_by_a_rerun(ckpt, tmp_path, capsys, left):
    """A killed export left a directory its own rerun refused ("holds model.safetensors and is not a
    Hugging Face checkpoint", or config.json "not valid JSON"): the weights, written first, carry the mark."""
    out = tmp_path / "hf"
    assert main(["export", "hf", str(ckpt), str(out)]) == 0
    whole = (out / "config.json").read_text()
    (out / "generation_config.json").unlink()
    if left == "no config.json":
        (out / "config.json").unlink()
    else:
        (out / "config.json").write_text(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(["export", "hf", str(ckpt), str(out)]) == 0, capsys.readouterr().err
    assert (out / "config.json").read_text() == whole and (out / "generation_config.json").is_file()


def test_an_export_does_not_replace_a_directory_of_other_files(ckpt, tmp_path, capsys):
    """What the rerun above may replace is an export's own directory only (unchanged behaviour)."""
    out = tmp_path / "other"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    refused(capsys, ["export", "hf", ckpt, out], out, "holds tokenizer.json and is not a Hugging Face")
    assert (out / "tokenizer.json").read_text() == "{}"


@pytest.mark.parametrize("stage", ["generate", "export"])
def test_output_into_a_closed_pipe_is_one_line(ckpt, tmp_path, stage):
    """`codefoundry generate ... | head -c 1`, `codefoundry export hf ... | true`: the reader leaves. Was a
    BrokenPipeError traceback and exit status 1, after the export had been written."""
    argv = ["generate", str(ckpt), "--prompt", "def", "--max-tokens", "8"]
    if stage == "export":
        argv = ["export", "hf", str(ckpt), str(tmp_path / "hf")]
    with subprocess.Popen(
        [sys.executable, "-m", "codefoundry.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        proc.stdout.close()  # before the child writes anything: every write it makes meets a closed pipe
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 141, err
    assert err == f"codefoundry {stage}: stdout closed before the output ended (broken pipe)\n", err
    if stage == "export":  # written before the report that could not be printed
        assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] > 0


def test_tokenizer_train_on_a_directory_without_py_files_names_the_suffix(tmp_path, capsys):
    """Was "no source files to train on" of a directory of (JavaScript) sources, not saying which are read."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.js").write_text("let x = 1;\n")
    argv = ["tokenizer", "train", "--data", src, "--out", tmp_path / "tok", "--vocab-size", 300]
    refused(capsys, argv, src, "no source files to train on (a directory is read for its .py files)")


def test_import_refuses_a_tokenizer_larger_than_the_model_or_not_a_tokenizer(built, ckpt, tmp_path, capsys):
    """`import hf` copied either into the new checkpoint without a word."""
    pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    assert main(["export", "hf", str(ckpt), str(hf)]) == 0
    top = with_big_tokenizer(hf, built["big"]) - 1
    needle = f"has token id {top}, but config.json says vocab_size {built['vocab']}"
    refused(capsys, ["import", "hf", hf, tmp_path / "imported"], hf / "tokenizer.json", needle)
    (hf / "tokenizer.json").write_text('{"model": "BPE"}')
    refused(
        capsys, ["import", "hf", hf, tmp_path / "imported"], hf / "tokenizer.json", "not a readable tokenizer"
    )
    assert not (tmp_path / "imported" / "model.safetensors").exists()


def test_the_cf_backend_refuses_a_tokenizer_larger_than_the_model(built, ckpt):
    from codefoundry.models.backends import BackendError, load_backend

    with_big_tokenizer(ckpt, built["big"])
    with pytest.raises(BackendError, match="the tokenizer is not this model's"):
        load_backend(f"cf:{ckpt}")


def test_a_context_past_the_limit_is_one_line_naming_the_field(ckpt, capsys):
    """A hand-edited config.json asking for 10^9 positions failed in the rotary tables' allocation."""
    config = json.loads((ckpt / "config.json").read_text())
    config["max_seq_len"] = 10**9
    (ckpt / "config.json").write_text(json.dumps(config))
    argv = ["generate", ckpt, "--prompt", "def", "--max-tokens", 2]
    refused(capsys, argv, ckpt / "config.json", "max_seq_len must be at most 2,097,152")
