"""codefoundry checkpoints: exact save/load round trips, the tokenizer travelling along, errors that name
the path and the problem, and a failed save that leaves the previous weights in place."""

import json
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import safetensors.torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from codefoundry.models import checkpoint  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.checkpoint import CheckpointError  # noqa: E402
from codefoundry.models.config import ModelConfig, MoEConfig  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402


def at(path, pattern: str) -> str:
    """A message pattern that starts with `path` (escaped: temporary paths may hold regex characters)."""
    return "^" + re.escape(str(path)) + pattern


VOCAB = 300

VARIANTS = {
    "dense_tied": {},
    "dense_untied": {"tie_embeddings": False, "qkv_bias": True},
    "moe_mtp": {"moe": MoEConfig(4, 2, 32, 32, False), "mtp_depth": 2},
}


def tiny(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=128,
        max_seq_len=32,
        **overrides,
    )
    model = Transformer(cfg)
    with torch.no_grad():  # norms and biases off their init values, so a dropped one shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VARIANTS)
def test_round_trip_is_exact(name, tmp_path):
    model = tiny(**VARIANTS[name])
    checkpoint.save(model, tmp_path)
    back = checkpoint.load(tmp_path)
    assert back.cfg == model.cfg and not back.training
    assert back.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    ids = batch()
    with torch.no_grad():
        a, b = model(ids, ids), back(ids, ids)  # the loss covers the MTP modules and the MoE aux loss
    # The weights are bit-identical (above); the outputs may differ by BLAS kernel choice (alignment).
    assert torch.allclose(a.logits, b.logits, rtol=0, atol=1e-6) and torch.allclose(
        a.loss, b.loss, rtol=0, atol=1e-6
    )
    assert a.parts.keys() == b.parts.keys()
    stored = load_file(str(tmp_path / checkpoint.WEIGHTS))
    # tied embeddings are stored once and tied again on load
    assert ("lm_head.weight" in stored) == (not model.cfg.tie_embeddings)
    assert (back.lm_head.weight is back.embed.weight) == model.cfg.tie_embeddings


def test_load_casts_to_the_requested_dtype(tmp_path):
    checkpoint.save(tiny(), tmp_path)
    model = checkpoint.load(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(batch()).logits.dtype == torch.bfloat16


def test_tokenizer_files_travel_with_the_checkpoint(tmp_path):
    tok_dir = tmp_path / "tok"
    tok = cft.train(cft.default_corpus()[:40], vocab_size=VOCAB, out=tok_dir)
    out = checkpoint.save(tiny(), tmp_path / "ckpt", tokenizer=tok_dir)
    for name in checkpoint.TOKENIZER_FILES:
        assert (out / name).read_bytes() == (tok_dir / name).read_bytes()
    text = "def f(x):\n    return x  # ok\n"
    assert cft.load(out).encode(text).ids == tok.encode(text).ids
    with pytest.raises(CheckpointError, match=at(tmp_path / "ckpt" / "nowhere", r": no tokenizer.json")):
        checkpoint.save(tiny(), tmp_path / "ckpt2", tokenizer=tmp_path / "ckpt" / "nowhere")


@pytest.fixture
def saved(tmp_path):
    return checkpoint.save(tiny(), tmp_path / "ckpt")


def test_missing_directory_or_weights(tmp_path, saved):
    with pytest.raises(CheckpointError, match=at(tmp_path / "nope", r": not a codefoundry checkpoint")):
        checkpoint.load(tmp_path / "nope")
    (saved / checkpoint.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=at(saved, r": no model.safetensors")):
        checkpoint.load(saved)


def test_truncated_weights(saved):
    weights = saved / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=at(weights, r": cannot read the weights")) as e:
        checkpoint.load(saved)
    assert "\n" not in str(e.value)


def edit_config(path, **changes) -> None:
    config = json.loads((path / checkpoint.CONFIG).read_text())
    (path / checkpoint.CONFIG).write_text(json.dumps({**config, **changes}))


def test_config_and_weights_that_disagree(saved):
    weights = saved / checkpoint.WEIGHTS
    edit_config(saved, ffn_dim=192)
    with pytest.raises(CheckpointError, match=at(weights, r": layers\.0\.mlp\.gate_up\.weight has shape")):
        checkpoint.load(saved)
    edit_config(saved, ffn_dim=128, n_layers=3)
    with pytest.raises(
        CheckpointError, match=at(weights, r": the weights do not match config.json \(missing")
    ):
        checkpoint.load(saved)
    edit_config(saved, n_layers=2, tie_embeddings=False)
    with pytest.raises(CheckpointError, match=r"missing \['lm_head.weight'\]"):
        checkpoint.load(saved)


def test_bad_config_files(saved):
    config = saved / checkpoint.CONFIG
    edit_config(saved, attention_sinks=4)
    with pytest.raises(CheckpointError, match=at(config, r": unknown model config fields: attention_sinks")):
        checkpoint.load(saved)
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match=at(config, r": cannot read the model config")):
        checkpoint.load(saved)


def test_a_failed_save_leaves_the_previous_weights(saved, monkeypatch):
    before = load_file(str(saved / checkpoint.WEIGHTS))
    config_before = (saved / checkpoint.CONFIG).read_text()

    def killed_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a torn file, as a kill during the write would leave
            f.write(b"\x00" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", killed_midway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tiny(seed=1, tie_embeddings=False), saved)
    monkeypatch.undo()
    after = load_file(str(saved / checkpoint.WEIGHTS))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert (saved / checkpoint.CONFIG).read_text() == config_before
    assert checkpoint.load(saved).cfg.tie_embeddings
