"""Hugging Face export and import, compared logit for logit with transformers' own classes."""

import json
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from safetensors.torch import load_file, save_file  # noqa: E402

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.config import ModelConfig, MoEConfig  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402


def at(path, pattern: str) -> str:
    """A message pattern that starts with `path` (escaped: temporary paths may hold regex characters)."""
    return "^" + re.escape(str(path)) + pattern


VOCAB = 512
TOL = 1e-4

# name -> (config overrides, the HF class it must become)
VARIANTS = {
    "dense_tied": ({}, "LlamaForCausalLM"),
    "dense_untied": ({"tie_embeddings": False}, "LlamaForCausalLM"),
    "qkv_bias": ({"qkv_bias": True}, "Qwen2ForCausalLM"),
    "moe_renorm": ({"moe": MoEConfig(4, 2, 32, 0, True)}, "MixtralForCausalLM"),
    "moe_no_renorm": ({"moe": MoEConfig(4, 2, 32, 0, False)}, "Qwen2MoeForCausalLM"),
    "moe_shared_renorm": ({"moe": MoEConfig(4, 2, 32, 32, True)}, "Qwen2MoeForCausalLM"),
    "moe_shared_no_renorm": (
        {"moe": MoEConfig(4, 2, 32, 32, False), "tie_embeddings": False},
        "Qwen2MoeForCausalLM",
    ),
    "moe_qkv_bias_mtp": (
        {"moe": MoEConfig(4, 2, 32, 0, True), "qkv_bias": True, "mtp_depth": 1},
        "Qwen2MoeForCausalLM",
    ),
}


def _perturb(named_params, seed: int) -> None:
    """Norm weights away from 1 and biases away from 0, so that a swapped or dropped one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_params:
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def tiny(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    # init_std 0.1 (not 0.02) so the logits are O(1) and a 1e-4 tolerance means something
    cfg = ModelConfig(
        vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64,
        init_std=0.1, **overrides,
    )  # fmt: skip
    model = Transformer(cfg)
    _perturb(model.named_parameters(), seed)
    return model.eval()


def batch(seed: int = 1, shape=(2, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(cft.SPECIAL_TOKENS), VOCAB, shape, generator=g)  # no special tokens


def greedy(model: Transformer, ids: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def load_hf(path, impl: str = "sdpa"):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation=impl
    ).eval()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    cft.train(cft.default_corpus()[:40], vocab_size=VOCAB, out=out)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tok_dir):
    """name -> (our model, its checkpoint dir, the HF dir, export_hf's report), built on first use."""
    root, cache = tmp_path_factory.mktemp("export"), {}

    def get(name: str):
        if name not in cache:
            overrides, _ = VARIANTS[name]
            model = tiny(**overrides)
            ckpt = checkpoint.save(model, root / name, tokenizer=tok_dir)
            report = hf.export_hf(ckpt, root / f"{name}_hf")
            cache[name] = (model, ckpt, root / f"{name}_hf", report)
        return cache[name]

    return get


@pytest.mark.parametrize("name", VARIANTS)
def test_export_loads_as_the_expected_class_with_the_same_logits(name, exported):
    model, _, out, report = exported(name)
    expected = VARIANTS[name][1]
    assert report["architecture"] == expected
    assert json.loads((out / "config.json").read_text())["architectures"] == [expected]
    ids = batch()
    with torch.no_grad():
        ours = model(ids).logits
        assert ours.abs().max() > 1.0  # not a degenerate near-zero comparison
        for impl in ("eager", "sdpa"):
            theirs = load_hf(out, impl)
            assert type(theirs).__name__ == expected
            diff = (theirs(ids).logits - ours).abs().max().item()
            assert diff <= TOL, f"{name} ({impl}): max abs logit diff {diff:.2e}"


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_generate_agrees_for_ten_tokens(name, exported):
    model, _, out, report = exported(name)
    ids = batch(seed=2, shape=(2, 8))
    ours = greedy(model, ids, 10)
    theirs = load_hf(out).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False
    )
    eos = report["eos_token_id"]
    for mine, row in zip(ours.tolist(), theirs.tolist(), strict=True):
        # transformers stops a row at EOS and pads it; up to there the rows must agree
        end = row.index(eos, ids.shape[1]) + 1 if eos in row[ids.shape[1] :] else len(row)
        assert row[:end] == mine[:end]


def test_mtp_modules_are_dropped_and_said_so(exported):
    model, _, out, report = exported("moe_qkv_bias_mtp")
    assert any("multi-token-prediction" in w for w in report["warnings"])
    assert not [k for k in load_file(str(out / "model.safetensors")) if "mtp" in k]
    assert exported("dense_tied")[3]["warnings"] == []


def test_tokenizer_ids_and_special_token_ids_agree(exported, tok_dir):
    _, _, out, report = exported("dense_tied")
    ours = cft.load(tok_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    text = cft.default_corpus()[3].read_text(encoding="utf-8")[:1500] + cft.EOT
    assert (
        theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_special_tokens=False).ids
    )
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    for role in ("bos", "eos", "pad"):
        key = f"{role}_token_id"
        assert config[key] == generation[key] == report[key] == getattr(theirs, key), key
    assert config["eos_token_id"] == ours.token_to_id(cft.EOT)
    assert config["pad_token_id"] == ours.token_to_id(cft.FIM_PAD)
    loaded = transformers.AutoConfig.from_pretrained(str(out))
    assert loaded.eos_token_id == config["eos_token_id"]


@pytest.mark.parametrize("name", VARIANTS)
def test_export_then_import_is_exact(name, exported):
    model, _, out, _ = exported(name)
    back = hf_import.import_hf(out)
    ids = batch(seed=3)
    with torch.no_grad():
        # the same weights; only BLAS kernel choices (alignment of the re-read tensors) can differ
        assert (back(ids).logits - model(ids).logits).abs().max() <= 1e-5
    # What the HF config cannot hold: MTP modules, and (Mixtral) a dense width the MoE never uses.
    expected = {**model.cfg.to_dict(), "mtp_depth": 0, "extra": back.cfg.extra}
    if VARIANTS[name][1] == "MixtralForCausalLM":
        expected["ffn_dim"] = model.cfg.moe.expert_dim
    assert back.cfg.to_dict() == expected


def test_capacity_factor_is_refused_unless_dropless_is_allowed(tmp_path, tok_dir):
    model = tiny(moe=MoEConfig(4, 2, 32, 0, True, capacity_factor=1.0))
    ckpt = checkpoint.save(model, tmp_path / "ckpt", tokenizer=tok_dir)
    with pytest.raises(ValueError, match=r"capacity_factor=1\.0.*dropless"):
        hf.export_hf(ckpt, tmp_path / "hf")
    report = hf.export_hf(ckpt, tmp_path / "hf", allow_dropless=True)
    assert any("dropless" in w for w in report["warnings"])


def test_export_refuses_to_overwrite_the_checkpoint(exported):
    _, ckpt, _, _ = exported("dense_tied")
    with pytest.raises(ValueError, match=at(ckpt, ": the export would overwrite")):
        hf.export_hf(ckpt, ckpt)
    assert checkpoint.load(ckpt) is not None


def test_export_without_a_tokenizer_says_so(tmp_path):
    ckpt = checkpoint.save(tiny(), tmp_path / "ckpt")
    report = hf.export_hf(ckpt, tmp_path / "hf")
    assert report["tokenizer"] is False and report["eos_token_id"] is None
    assert any("no tokenizer" in w for w in report["warnings"])
    assert load_hf(tmp_path / "hf") is not None


# ------------------------------------------------------------------------------------- import from HF


def hf_tiny(kind: str, seed: int = 0, **overrides):
    """A random tiny transformers model: "llama", "qwen2", "qwen2_moe" or "mixtral"."""
    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
    )  # fmt: skip
    moe = dict(num_experts_per_tok=2, router_aux_loss_coef=0.01)
    make = {
        "llama": lambda: transformers.LlamaConfig(**common, **overrides),
        "qwen2": lambda: transformers.Qwen2Config(**common, **overrides),
        "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
            **common,
            **moe,
            num_experts=4,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=False,
            **overrides,
        ),  # fmt: skip
        "mixtral": lambda: transformers.MixtralConfig(**common, **moe, num_local_experts=4, **overrides),
    }
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(make[kind](), attn_implementation="sdpa")
    _perturb(model.named_parameters(), seed)
    return model.eval()


def assert_same_logits(ours: Transformer, theirs) -> None:
    ids = batch(seed=4)
    with torch.no_grad():
        expected = theirs(ids).logits
        assert expected.abs().max() > 1.0
        diff = (ours(ids).logits - expected).abs().max().item()
    assert diff <= TOL, f"max abs logit diff {diff:.2e}"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_import_saved_llama_and_qwen2(kind, tmp_path, tok_dir):
    theirs = hf_tiny(kind, tie_word_embeddings=kind == "qwen2")
    theirs.save_pretrained(str(tmp_path / "hf"), max_shard_size="100KB")  # sharded, with an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    checkpoint.copy_tokenizer(tok_dir, tmp_path / "hf")
    ours = hf_import.import_hf(tmp_path / "hf", tmp_path / "cf")
    assert ours.cfg.qkv_bias == (kind == "qwen2") and ours.cfg.rope_theta == 5000.0
    assert_same_logits(ours, theirs)
    reloaded = checkpoint.load(tmp_path / "cf")
    assert (tmp_path / "cf" / "tokenizer.json").is_file()
    assert_same_logits(reloaded, theirs)
    # Into its own source, or over a pretraining run's checkpoint, the import wrote over them; an earlier
    # import is replaced.
    with pytest.raises(ValueError, match="holds a Hugging Face checkpoint"):
        hf_import.import_hf(tmp_path / "hf", tmp_path / "hf")
    assert load_hf(tmp_path / "hf") is not None  # the source is intact
    (tmp_path / "cf" / "trainer_state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="pretraining run's checkpoint"):
        hf_import.import_hf(tmp_path / "hf", tmp_path / "cf")
    (tmp_path / "cf" / "trainer_state.pt").unlink()
    assert_same_logits(hf_import.import_hf(tmp_path / "hf", tmp_path / "cf"), theirs)


@pytest.mark.parametrize("kind", ["qwen2_moe", "mixtral"])
def test_import_moe_models_in_memory_and_saved(kind, tmp_path):
    theirs = hf_tiny(kind)
    if kind == "qwen2_moe":
        with torch.no_grad():
            for layer in theirs.model.layers:
                layer.mlp.shared_expert_gate.weight.zero_()  # the only gate with an exact equivalent
    assert_same_logits(hf_import.import_hf(theirs), theirs)  # fused 3-D expert tensors
    theirs.save_pretrained(str(tmp_path / "hf"))
    assert_same_logits(hf_import.import_hf(tmp_path / "hf"), theirs)  # one tensor per expert on disk


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama")
    hf_tiny("llama").save_pretrained(str(out))
    return out


@pytest.mark.parametrize(
    "edit, field",
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_parameters"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16}, "sliding_window"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "gpt2"}, "model_type"),
    ],
)
def test_import_refuses_what_it_cannot_compute(edit, field, llama_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((llama_dir / "model.safetensors").read_bytes())
    config = {**json.loads((llama_dir / "config.json").read_text()), **edit}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=at(bad, rf": {field}=.*not supported")) as e:
        hf_import.import_hf(bad)
    assert "\n" not in str(e.value)


def test_import_errors_name_the_path_and_the_problem(llama_dir, tmp_path):
    with pytest.raises(ValueError, match=at(tmp_path, r": no config.json")):
        hf_import.import_hf(tmp_path)
    (tmp_path / "config.json").write_bytes((llama_dir / "config.json").read_bytes())
    with pytest.raises(ValueError, match="no model.safetensors"):
        hf_import.import_hf(tmp_path)
    sd = load_file(str(llama_dir / "model.safetensors"))
    save_file(
        {**sd, "model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(ValueError, match=r"no counterpart here: model\.layers\.0\.self_attn\.o_proj\.bias"):
        hf_import.import_hf(tmp_path)
    config = json.loads((llama_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "vocab_size"}))
    with pytest.raises(ValueError, match=at(tmp_path, ": the config has no 'vocab_size'")):
        hf_import.import_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    sd.pop("model.norm.weight")
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"the weights have no model\.norm\.weight"):
        hf_import.import_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="cannot read the weights"):
        hf_import.import_hf(tmp_path)
    with pytest.raises(TypeError, match="checkpoint directory or a transformers model"):
        hf_import.import_hf(42)


def test_public_api():
    assert set(hf.__all__) == {"export_hf", "hf_architecture", "hf_state_dict", "to_transformers"}
    assert set(hf_import.__all__) == {"import_hf", "config_from_hf"}
    assert all(callable(getattr(module, name)) for module in (hf, hf_import) for name in module.__all__)


@pytest.mark.parametrize("moe", [None, MoEConfig(n_experts=4, top_k=2, expert_dim=32, shared_expert_dim=32)])
def test_to_transformers_is_the_same_network_in_memory(moe):
    model = tiny(seed=3, moe=moe)
    theirs = hf.to_transformers(model)
    ids = batch()
    with torch.no_grad():
        diff = (theirs(ids).logits - model(ids).logits).abs().max().item()
    assert diff <= 1e-4
    assert type(theirs).__name__ == hf.hf_architecture(model.cfg)
