"""Review s36: what a Hugging Face directory's files mean to the import. A SentencePiece tokenizer.model
without a tokenizer.json is converted (as transformers' AutoTokenizer does) or refused in one line, never
dropped without a word; and model.safetensors is read before model.safetensors.index.json, transformers'
order."""

import io
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402

VOCAB, TOL = 96, 1e-4


def hf_llama(seed: int, vocab: int = VOCAB):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.1, bos_token_id=1,
        eos_token_id=2, pad_token_id=None,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def logit_diff(ours, theirs, vocab: int = VOCAB) -> float:
    x = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(x).logits
        assert expected.abs().max() > 1.0
        return (ours(x).logits - expected).abs().max().item()


# ------------------------------------------------------------------------------- weights: file before index


def test_a_single_file_beside_an_index_is_read_as_transformers_reads_it(tmp_path):
    """An index left by an earlier sharded save beside a newer single file: transformers loads the file;
    the import read the shards, another model, without a word."""
    current, stale = hf_llama(seed=0), hf_llama(seed=1)
    src = tmp_path / "src"
    stale.save_pretrained(str(src), max_shard_size="20KB")
    assert (src / hf.INDEX).is_file() and not (src / hf.WEIGHTS).exists()
    current.save_pretrained(str(tmp_path / "single"))
    shutil.copyfile(tmp_path / "single" / hf.WEIGHTS, src / hf.WEIGHTS)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    assert logit_diff(theirs, current) == 0.0  # the premise: transformers takes the single file
    ours = hf_import.import_hf(src, tmp_path / "cf")
    assert logit_diff(ours, theirs) <= TOL
    assert logit_diff(checkpoint.load(tmp_path / "cf"), theirs) <= TOL


def test_an_index_alone_is_still_read(tmp_path):
    theirs = hf_llama(seed=1)
    theirs.save_pretrained(str(tmp_path / "src"), max_shard_size="20KB")
    assert len(list((tmp_path / "src").glob("model-*.safetensors"))) > 1
    assert logit_diff(hf_import.import_hf(tmp_path / "src"), theirs) <= TOL


# ---------------------------------------------------------------------------- tokenizer.model without json


@pytest.fixture
def llama_dir(tmp_path):
    src = tmp_path / "src"
    hf_llama(seed=0).save_pretrained(str(src))
    return src


def test_a_tokenizer_model_that_cannot_be_converted_fails_in_one_line_naming_it(llama_dir, tmp_path):
    # Not a SentencePiece model; without the sentencepiece package no tokenizer.model converts at all.
    (llama_dir / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model\n")
    with pytest.raises(ValueError, match=r"tokenizer\.model: no tokenizer\.json beside it") as e:
        hf_import.import_hf(llama_dir, tmp_path / "cf")
    message = str(e.value)
    assert message.startswith(str(llama_dir / "tokenizer.model")) and "\n" not in message
    assert "pip install sentencepiece" in message
    assert not (tmp_path / "cf" / "model.safetensors").exists()  # refused before anything was written
    # Into memory no tokenizer is saved, so there is nothing to refuse.
    assert hf_import.import_hf(llama_dir).cfg.vocab_size == VOCAB


def test_the_cli_refuses_it_in_one_line(llama_dir, tmp_path, capsys):
    from codefoundry.cli import main

    (llama_dir / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model\n")
    assert main(["import", "hf", str(llama_dir), str(tmp_path / "cf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizer.model: no tokenizer.json" in err


def test_a_directory_with_no_tokenizer_at_all_imports_as_before(llama_dir, tmp_path):
    hf_import.import_hf(llama_dir, tmp_path / "cf")
    assert not (tmp_path / "cf" / "tokenizer.json").exists()


SPM_VOCAB = 330


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    """A Llama directory whose tokenizer is a SentencePiece tokenizer.model (BPE with byte fallback, as
    Llama 2's) and a tokenizer_config.json, no tokenizer.json."""
    spm = pytest.importorskip(
        "sentencepiece", reason="sentencepiece is not installed: the conversion branch cannot run"
    )
    pytest.importorskip("google.protobuf", reason="protobuf is not installed: transformers cannot convert")
    src = tmp_path_factory.mktemp("spm") / "src"
    hf_llama(seed=0, vocab=SPM_VOCAB).save_pretrained(str(src))
    lines = [f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=SPM_VOCAB, model_type="bpe",
        byte_fallback=True, minloglevel=2,
    )  # fmt: skip
    (src / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "legacy": False}
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    return src


def test_a_sentencepiece_tokenizer_is_converted_into_the_checkpoint(spm_dir, tmp_path):
    hf_import.import_hf(spm_dir, tmp_path / "cf")
    assert (tmp_path / "cf" / "tokenizer.json").is_file()
    assert not (spm_dir / "tokenizer.json").exists()  # the source is left as it was
    ours = cft.load(tmp_path / "cf")
    theirs = transformers.AutoTokenizer.from_pretrained(str(spm_dir))
    for text in ("def f3(x):\n    return x * 7", "  tabs\tand é ünïcode → 𝄞", "<s>x</s>"):
        assert ours.encode(text).ids == theirs.encode(text), text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == theirs.decode(
            theirs.encode(text)
        )
    # and it travels on: the export names bos/eos by the converted tokenizer's ids
    result = hf.export_hf(tmp_path / "cf", tmp_path / "out")
    assert result["tokenizer"] and (result["bos_token_id"], result["eos_token_id"]) == (1, 2)
    back = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert back.encode("def f3(x):") == theirs.encode("def f3(x):")
