"""Review s35: Qwen2-MoE's sigmoid-gated shared expert (routed + sigmoid(w . x) * shared(x)), checked
against transformers' Qwen2MoeForCausalLM logit for logit."""

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_parity_kit import VOCAB, ids, max_diff  # noqa: E402

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402
from codefoundry.models.config import ModelConfig, MoEConfig  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

TOL = 1e-4


def hf_qwen2_moe(seed: int = 0):
    """A random tiny Qwen2-MoE whose shared-expert gates are random, so nonzero and different per token."""
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, rms_norm_eps=1e-6,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40,
        norm_topk_prob=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.shared_expert_gate.weight.copy_(torch.randn(1, 32))  # gates spread over (0, 1)
    return model


def test_a_gate_needs_a_shared_expert():
    with pytest.raises(ValueError, match=r"^moe\.shared_expert_gate=true needs a shared expert"):
        MoEConfig(n_experts=4, shared_expert_gate=True)


def test_the_gate_scales_the_shared_expert_per_token():
    moe = MoEConfig(n_experts=4, expert_dim=8, shared_expert_dim=8, shared_expert_gate=True)
    model = Transformer(ModelConfig(vocab_size=16, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, moe=moe))
    layer = model.layers[0].mlp
    assert layer.shared_gate.weight.shape == (1, 16)
    x, w = torch.randn(3, 16), torch.randn(1, 16)
    with torch.no_grad():
        layer.shared_gate.weight.copy_(w)
        gated = layer(x)
        layer.shared, shared = None, layer.shared  # the routed experts alone
        routed = layer(x)
        assert torch.allclose(gated, routed + torch.sigmoid(x @ w.T) * shared(x), atol=1e-6)


@pytest.mark.parametrize("on_disk", [False, True])
def test_import_of_a_nonzero_gate_matches_transformers(on_disk, tmp_path):
    theirs = hf_qwen2_moe()
    src = theirs
    if on_disk:
        theirs.save_pretrained(str(tmp_path / "hf"))
        src = tmp_path / "hf"
    ours = hf_import.import_hf(src)
    assert ours.cfg.moe.shared_expert_gate and ours.cfg.moe.shared_expert_dim == 40
    diff = max_diff(ours, theirs)
    assert diff <= TOL, f"max abs logit diff {diff:.2e}"


def test_export_round_trip_keeps_the_gate(tmp_path):
    theirs = hf_qwen2_moe(seed=1)
    theirs.save_pretrained(str(tmp_path / "hf"))
    ours = hf_import.import_hf(tmp_path / "hf", tmp_path / "cf")
    hf.export_hf(tmp_path / "cf", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [
        "Qwen2MoeForCausalLM"
    ]
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    diff = max_diff(ours, exported.eval())
    assert diff <= TOL, f"max abs logit diff {diff:.2e}"
    gate = exported.model.layers[0].mlp.shared_expert_gate.weight
    assert torch.equal(gate, theirs.model.layers[0].mlp.shared_expert_gate.weight)
    back = hf_import.import_hf(tmp_path / "out")
    assert back.cfg == ours.cfg == checkpoint.load(tmp_path / "cf").cfg
    x = ids(seed=3)
    with torch.no_grad():
        assert (back(x).logits - ours(x).logits).abs().max() <= 1e-5


def test_an_all_zero_gate_still_imports_as_an_ungated_expert(tmp_path):
    theirs = hf_qwen2_moe(seed=2)
    with torch.no_grad():
        for layer in theirs.model.layers:
            layer.mlp.shared_expert_gate.weight.zero_()
    ours = hf_import.import_hf(theirs)
    assert not ours.cfg.moe.shared_expert_gate and ours.layers[0].mlp.shared_gate is None
    assert max_diff(ours, theirs) <= TOL
