"""Bad input to the model commands (`tokenizer train`, `pretrain`, `export hf`, `import hf`, `generate`):
each case is one line on stderr that names the file, field or option and what is wrong, exit status 2,
no traceback, and nothing already written lost. One case per test, run through `codefoundry.cli.main`
in-process on a tiny tokenizer and checkpoint built once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from codefoundry.cli import main  # noqa: E402
from codefoundry.cli_model import _pretrain_line  # noqa: E402
from codefoundry.models import checkpoint, hf  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.config import ModelConfig  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.train.pretrain import PretrainConfig  # noqa: E402


def source(i: int) -> str:
    return "".join(f"def f{i}_{j}(x, y):\n    z = x + y * {j}\n    return z - {i}\n\n" for j in range(12))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """data/ (a few .py files), tok/ (a tokenizer), ckpt/ (a tiny checkpoint with it), hf/ (its export)."""
    root = tmp_path_factory.mktemp("bad_input")
    (root / "data").mkdir()
    for i in range(6):
        (root / "data" / f"m{i}.py").write_text(source(i))
    tok = cft.train(sorted((root / "data").glob("*.py")), vocab_size=300, out=root / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32
    )
    checkpoint.save(Transformer(cfg).eval(), root / "ckpt", tokenizer=root / "tok")
    hf.export_hf(root / "ckpt", root / "hf")
    (root / "afile.txt").write_text("not a directory\n")
    return {name: root / name for name in ("data", "tok", "ckpt", "hf", "afile.txt")}


def cli(capsys, *argv: object) -> tuple[int, str]:
    """(exit status, stderr) of `codefoundry ARGV`."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused(capsys, stage: str, where: object, needle: str, *argv: object) -> None:
    """`codefoundry ARGV` exits 2 with one line `codefoundry STAGE: WHERE...NEEDLE...`."""
    code, err = cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith(f"codefoundry {stage}: {where}") and err.count("\n") == 1, err
    assert needle in err, err


def copy(built, tmp_path: Path, name: str = "ckpt") -> Path:
    return Path(shutil.copytree(built[name], tmp_path / name))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------- tokenizer train


def test_tokenizer_train_refuses_data_with_no_utf8_file(built, tmp_path, capsys):
    data = tmp_path / "latin1"
    data.mkdir()
    (data / "a.py").write_bytes(b"s = '\xe9t\xe9'\n")
    args = ("tokenizer", "train", "--data", data, "--vocab-size", 300, "--out", tmp_path / "tok")
    refused(capsys, "tokenizer", data, "no non-empty UTF-8 source files (1 skipped as not UTF-8)", *args)
    assert not (tmp_path / "tok").exists()


def test_tokenizer_train_counts_only_the_files_it_read(built, tmp_path):
    data = Path(shutil.copytree(built["data"], tmp_path / "data"))
    (data / "latin1.py").write_bytes(b"s = '\xe9t\xe9'\n")
    report = cft.train_command(str(data), 300, str(tmp_path / "tok"))
    assert (report.files, report.skipped) == (6, 1)


def test_tokenizer_train_refuses_a_negative_min_frequency(built, tmp_path, capsys):
    args = ("--data", built["data"], "--vocab-size", 300, "--min-frequency", -1, "--out", tmp_path / "tok")
    refused(capsys, "tokenizer", "min_frequency", "must be >= 0, got -1", "tokenizer", "train", *args)


def test_tokenizer_train_refuses_an_output_path_that_is_a_file(built, capsys):
    out = built["afile.txt"]
    args = ("tokenizer", "train", "--data", built["data"], "--vocab-size", 300, "--out", out)
    refused(capsys, "tokenizer", out, "is a file, not a directory", *args)


def test_a_killed_tokenizer_save_leaves_the_previous_tokenizer_json(built, tmp_path):
    out = copy(built, tmp_path, "tok")
    before = (out / "tokenizer.json").read_bytes()

    class KilledMidWrite:
        def save(self, path: str) -> None:
            Path(path).write_text('{"version": "1.0", "trunc')  # what a kill during the write leaves
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cft.save(KilledMidWrite(), out)
    assert (out / "tokenizer.json").read_bytes() == before


# -------------------------------------------------------------------------------------------- pretrain


def pretrain_args(built, out: Path, *extra: object) -> list[object]:
    return ["pretrain", "--data", built["data"], "--tokenizer", built["tok"], "--out", out, "--steps", 1,
            "--batch-size", 2, "--seq-len", 16, "--eval-batches", 1, "--no-progress", "--no-final-eval",
            *extra]  # fmt: skip


def test_pretrain_refuses_an_output_path_that_is_a_file(built, capsys):
    out = built["afile.txt"]
    refused(capsys, "pretrain", out, "is a file, not a directory", *pretrain_args(built, out))


def test_pretrain_refuses_an_unknown_size_before_reading_the_data(built, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = pretrain_args(built, tmp_path / "run", "--size", "huge", "--data", tmp_path / "empty")
    refused(capsys, "pretrain", "PretrainConfig.size", "unknown size 'huge'; known: tiny", *args)


def test_pretrain_config_refuses_a_fim_rate_outside_0_1():
    with pytest.raises(ValueError, match=r"^PretrainConfig\.fim_rate: invalid value 1\.5$"):
        PretrainConfig(data="d", tokenizer="t", out="o", fim_rate=1.5)


def resumable(built, tmp_path: Path) -> Path:
    """OUT/checkpoint with a trainer state that `pretrain_args` may resume (the weights are read after the
    state and the vocabulary are checked, so they need not be of the tiny size)."""
    out = tmp_path / "run"
    shutil.copytree(built["ckpt"], out / "checkpoint")
    shape = {"size": "tiny", "shape": None, "moe_experts": 0, "moe_top_k": 2, "mtp_depth": 0}
    torch.save({"config": shape, "step": 1}, out / "checkpoint" / "trainer_state.pt")
    return out


def test_pretrain_resume_from_a_torn_trainer_state(built, tmp_path, capsys):
    out = resumable(built, tmp_path)
    state = out / "checkpoint" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    args = pretrain_args(built, out, "--resume")
    refused(capsys, "pretrain", state, "cannot read the trainer state", *args)


def test_pretrain_resume_from_torn_weights(built, tmp_path, capsys):
    out = resumable(built, tmp_path)
    weights = out / "checkpoint" / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    args = pretrain_args(built, out, "--resume")
    refused(capsys, "pretrain", weights, "cannot read the weights", *args)


def test_pretrain_summary_line_without_held_out_data():
    summary = {"stopped": "completed", "step": 1, "steps": 1, "val_loss": None, "unigram_loss": None,
               "tokens": 32, "wall_s": 1.0, "tokens_per_s": None, "checkpoint": "run/checkpoint"}  # fmt: skip
    assert "val_loss n/a (unigram baseline n/a)" in _pretrain_line(summary)


# ------------------------------------------------------------------------------ checkpoint config.json


def generate_args(ckpt: Path, *extra: object) -> list[object]:
    return ["generate", ckpt, "--prompt", "def f(", "--max-tokens", 2, "--no-stream", *extra]


def test_config_json_that_is_not_an_object(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    (ckpt / "config.json").write_text("[1, 2]")
    where = ckpt / "config.json"
    refused(capsys, "generate", where, "must be a JSON object, got a list", *generate_args(ckpt))


def test_config_json_with_a_wrong_typed_field(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    edit_json(ckpt / "config.json", lambda d: d.update(dim="32"))
    refused(
        capsys, "generate", ckpt / "config.json", "dim must be an integer, got '32'", *generate_args(ckpt)
    )


def test_config_json_with_a_missing_field(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    edit_json(ckpt / "config.json", lambda d: d.pop("vocab_size"))
    refused(capsys, "generate", ckpt / "config.json", "vocab_size is missing", *generate_args(ckpt))


def test_config_json_with_zero_heads(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    edit_json(ckpt / "config.json", lambda d: d.update(n_heads=0))
    refused(
        capsys,
        "export",
        ckpt / "config.json",
        "n_heads must be >= 1, got 0",
        "export",
        "hf",
        ckpt,
        tmp_path / "o",
    )


def test_config_json_with_a_negative_vocab_size(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    edit_json(ckpt / "config.json", lambda d: d.update(vocab_size=-1))
    refused(capsys, "generate", ckpt / "config.json", "vocab_size must be >= 1, got -1", *generate_args(ckpt))


def test_config_json_with_moe_not_an_object(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    edit_json(ckpt / "config.json", lambda d: d.update(moe="yes"))
    refused(capsys, "generate", ckpt / "config.json", "moe must be an object", *generate_args(ckpt))


def test_config_json_with_max_seq_len_zero(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    edit_json(ckpt / "config.json", lambda d: d.update(max_seq_len=0))
    refused(capsys, "generate", ckpt / "config.json", "max_seq_len must be >= 1, got 0", *generate_args(ckpt))


# ------------------------------------------------------------------------------------------- export hf


def test_export_refuses_an_output_path_that_is_a_file(built, capsys):
    out = built["afile.txt"]
    refused(capsys, "export", out, "is a file, not a directory", "export", "hf", built["ckpt"], out)


def test_export_refuses_a_directory_holding_another_checkpoint(built, tmp_path, capsys):
    other = copy(built, tmp_path)
    before = (other / "config.json").read_bytes()
    args = ("export", "hf", built["ckpt"], other)
    refused(capsys, "export", other, "holds config.json and is not a Hugging Face checkpoint", *args)
    assert (other / "config.json").read_bytes() == before


def test_export_over_an_earlier_export_is_allowed(built, tmp_path, capsys):
    """Not a bad input: the guard above must let a rerun of the same export through."""
    out = copy(built, tmp_path, "hf")
    code, err = cli(capsys, "export", "hf", built["ckpt"], out)
    assert code == 0, err


def test_export_of_a_corrupted_tokenizer_json_names_it_and_writes_nothing(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    (ckpt / "tokenizer.json").write_text("{broken")
    out = tmp_path / "out"
    refused(capsys, "export", ckpt / "tokenizer.json", "not valid JSON", "export", "hf", ckpt, out)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- import hf


def test_import_refuses_an_output_path_that_is_a_file(built, capsys):
    out = built["afile.txt"]
    refused(capsys, "import", out, "is a file, not a directory", "import", "hf", built["hf"], out)


def test_import_config_json_that_is_not_an_object(built, tmp_path, capsys):
    src = copy(built, tmp_path, "hf")
    (src / "config.json").write_text("[1]")
    args = ("import", "hf", src, tmp_path / "out")
    refused(capsys, "import", src / "config.json", "expected a JSON object, got a list", *args)


def test_import_config_json_without_hidden_size(built, tmp_path, capsys):
    src = copy(built, tmp_path, "hf")
    edit_json(src / "config.json", lambda d: d.pop("hidden_size"))
    refused(capsys, "import", src, "the config has no 'hidden_size'", "import", "hf", src, tmp_path / "out")


def test_import_config_json_with_rope_parameters_not_an_object(built, tmp_path, capsys):
    src = copy(built, tmp_path, "hf")
    edit_json(src / "config.json", lambda d: d.update(rope_parameters="x"))
    args = ("import", "hf", src, tmp_path / "out")
    refused(capsys, "import", f"{src}: rope_parameters='x'", "expected an object", *args)


def test_import_index_without_a_weight_map_object(built, tmp_path, capsys):
    src = copy(built, tmp_path, "hf")
    (src / hf.WEIGHTS).unlink()  # beside model.safetensors the index is not read (transformers' order)
    (src / hf.INDEX).write_text('{"weight_map": 3}')
    args = ("import", "hf", src, tmp_path / "out")
    refused(capsys, "import", src / hf.INDEX, "no weight_map", *args)


def test_import_refuses_max_seq_len_zero(built, tmp_path, capsys):
    args = ("import", "hf", built["hf"], tmp_path / "out", "--max-seq-len", 0)
    refused(capsys, "import", "max_seq_len", "must be >= 1, got 0", *args)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------- generate


def test_generate_refuses_max_tokens_zero(built, capsys):
    refused(
        capsys,
        "generate",
        "--max-tokens",
        "must be >= 1, got 0",
        *generate_args(built["ckpt"]),
        "--max-tokens",
        0,
    )


def test_generate_refuses_a_nan_temperature(built, capsys):
    args = (*generate_args(built["ckpt"]), "--temperature", "nan")
    refused(capsys, "generate", "--temperature", "must be a finite number >= 0, got nan", *args)


def test_generate_refuses_top_p_above_one(built, capsys):
    args = (*generate_args(built["ckpt"]), "--temperature", 1, "--top-p", 1.5)
    refused(capsys, "generate", "--top-p", "must be in (0, 1], got 1.5", *args)


def test_generate_without_tokenizer_json(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    (ckpt / "tokenizer.json").unlink()
    refused(capsys, "generate", ckpt / "tokenizer.json", "no such tokenizer file", *generate_args(ckpt))


def test_generate_with_a_corrupted_tokenizer_json(built, tmp_path, capsys):
    ckpt = copy(built, tmp_path)
    (ckpt / "tokenizer.json").write_text("{broken")
    refused(capsys, "generate", ckpt / "tokenizer.json", "not a readable tokenizer", *generate_args(ckpt))


def test_generate_on_ids_refuses_a_nan_temperature(built):
    model = checkpoint.load(built["ckpt"])
    with pytest.raises(ValueError, match="need temperature >= 0"):
        generate(model, [[1, 2]], max_new_tokens=1, temperature=float("nan"))
