"""Review s35: Llama 3.x RoPE scaling (llama3 and linear) through import, our checkpoints and export,
against transformers' own logits past the original context."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_parity_kit import assert_bad_rope_refused, max_diff  # noqa: E402

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402
from codefoundry.models.config import ModelConfig  # noqa: E402
from codefoundry.models.transformer import rope_tables  # noqa: E402

VOCAB, ORIGINAL, MAX_POS, HEAD_DIM = 96, 64, 256, 32
TOL = 1e-4
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": ORIGINAL,
}
LINEAR = {"rope_type": "linear", "factor": 8.0}
SCALINGS = {"llama3": LLAMA3, "linear": LINEAR}


def hf_llama(rope_scaling: dict | None, seed: int = 0):
    """fp32 LlamaForCausalLM with random weights; `rope_scaling` goes in as transformers reads it."""
    torch.manual_seed(seed)
    rope = {"rope_theta": 10000.0, **(rope_scaling or {"rope_type": "default"})}
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=2 * HEAD_DIM, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=MAX_POS,
        initializer_range=0.1, rope_parameters=rope,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def ids(length: int = 200) -> torch.Tensor:
    # longer than the original context: the scaled bands are what differ there
    assert length > ORIGINAL
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=sorted(SCALINGS))
def saved(request, tmp_path_factory):
    """(kind, the HF model, its save_pretrained dir, our import of it saved as a checkpoint dir)."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    theirs = hf_llama(SCALINGS[kind])
    theirs.save_pretrained(str(root / "hf"))
    hf_import.import_hf(root / "hf", root / "cf")
    return kind, theirs, root


def test_the_tiny_model_has_bands_on_every_side_of_the_llama3_thresholds():
    # Otherwise the llama3 test would check one branch of the formula only.
    wavelengths = [2 * math.pi * 10000.0 ** (i / HEAD_DIM) for i in range(0, HEAD_DIM, 2)]
    low, high = ORIGINAL / LLAMA3["low_freq_factor"], ORIGINAL / LLAMA3["high_freq_factor"]
    assert any(w < high for w in wavelengths) and any(w > low for w in wavelengths)
    assert sum(high < w < low for w in wavelengths) >= 2


def test_import_has_transformers_logits_past_the_original_context(saved):
    kind, theirs, root = saved
    ours = checkpoint.load(root / "cf")  # through our config.json, not only the import's memory
    assert ours.cfg.rope_scaling == SCALINGS[kind] and len({ours.cfg, ours.cfg}) == 1  # still hashable
    assert json.loads((root / "cf" / "config.json").read_text())["rope_scaling"] == SCALINGS[kind]
    diff = max_diff(ours, theirs, ids())
    print(f"{kind}: import max abs logit diff {diff:.2e}")
    assert diff <= TOL, f"max abs logit diff {diff:.2e}"
    # and the scaling matters at these lengths: plain RoPE gives other logits
    plain = hf_llama(None)
    plain.load_state_dict(theirs.state_dict())
    assert max_diff(ours, plain, ids()) > 0.1


def test_import_of_a_model_in_memory(saved):
    kind, theirs, _ = saved
    assert max_diff(hf_import.import_hf(theirs), theirs, ids()) <= TOL


def test_legacy_rope_scaling_spelling_imports_the_same(saved, tmp_path):
    # Llama 3.1's released config.json (transformers 4.x): rope_scaling beside a top-level rope_theta,
    # and "type" instead of rope_type in older linear configs.
    kind, theirs, root = saved
    config = json.loads((root / "hf" / "config.json").read_text())
    config.pop("rope_parameters", None)
    legacy = dict(SCALINGS[kind])
    if kind == "linear":
        legacy["type"] = legacy.pop("rope_type")
    config.update(rope_scaling=legacy, rope_theta=10000.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((root / "hf" / "model.safetensors").read_bytes())
    ours = hf_import.import_hf(tmp_path)
    assert ours.cfg.rope_scaling == SCALINGS[kind]
    assert max_diff(ours, theirs, ids()) <= TOL


def test_export_round_trip_keeps_the_scaling_and_the_logits(saved):
    kind, theirs, root = saved
    hf.export_hf(root / "cf", root / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(root / "out"), dtype=torch.float32).eval()
    assert back.config.rope_parameters["rope_type"] == kind
    diff = max_diff(checkpoint.load(root / "cf"), back, ids())
    print(f"{kind}: export max abs logit diff {diff:.2e}")
    assert diff <= TOL
    assert max_diff(hf_import.import_hf(root / "out"), theirs, ids()) <= TOL


def test_a_config_without_rope_scaling_loads_as_plain_rope(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, dim=64, n_layers=1, n_heads=2, n_kv_heads=1)
    cfg.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    del data["rope_scaling"]  # a checkpoint written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = ModelConfig.load(tmp_path / "config.json")
    assert loaded.rope_scaling is None and loaded == cfg
    plain_cos, _ = rope_tables(loaded, 8)
    assert torch.equal(plain_cos, rope_tables(cfg, 8)[0])


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"rope_type": "dynamic", "factor": 8.0}, "rope_scaling.rope_type"),  # yarn: test_review_s36_yarn
        ({"rope_type": "linear"}, "rope_scaling.factor"),
        ({"rope_type": "linear", "factor": 0.0}, "rope_scaling.factor"),
        ({"rope_type": "linear", "factor": float("nan")}, "rope_scaling.factor"),
        ({"rope_type": "linear", "factor": "8"}, "rope_scaling.factor"),
        ({**LLAMA3, "low_freq_factor": -1.0}, "rope_scaling.low_freq_factor"),
        ({**LLAMA3, "low_freq_factor": 4.0}, "rope_scaling.low_freq_factor"),
        (
            {**LLAMA3, "original_max_position_embeddings": 64.5},
            "rope_scaling.original_max_position_embeddings",
        ),
        ({**LLAMA3, "original_max_position_embeddings": 0}, "rope_scaling.original_max_position_embeddings"),
        ({**LINEAR, "low_freq_factor": 1.0}, "rope_scaling"),
        ([8.0], "rope_scaling"),
    ],
)
def test_an_invalid_rope_scaling_is_refused_in_one_line(bad, field, tmp_path):
    with pytest.raises(ValueError, match=rf"^{field}\b") as e:
        ModelConfig(vocab_size=VOCAB, rope_scaling=bad)
    assert "\n" not in str(e.value)
    # in a checkpoint's config.json the error names the file too
    data = ModelConfig(vocab_size=VOCAB).to_dict() | {"rope_scaling": bad}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"config\.json: {field}\b"):
        ModelConfig.load(tmp_path / "config.json")


def test_an_hf_config_with_a_bad_llama3_scaling_is_refused_in_one_line(saved, tmp_path):
    _, _, root = saved
    bad = {**LLAMA3, "rope_theta": 10000.0, "high_freq_factor": 0.5}
    assert_bad_rope_refused(
        root / "hf", tmp_path, bad, r"low_freq_factor=1\.0 must be below high_freq_factor=0\.5"
    )


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])  # yarn imports since s36
@pytest.mark.parametrize("field", ["rope_scaling", "rope_parameters"])
def test_other_scalings_are_still_refused(rope_type, field, saved, tmp_path):
    _, _, root = saved
    config = json.loads((root / "hf" / "config.json").read_text())
    config[field] = {"rope_type": rope_type, "factor": 8.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((root / "hf" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=rf": {field}=.*{rope_type}.*is not supported") as e:
        hf_import.import_hf(tmp_path)
    assert "\n" not in str(e.value)
