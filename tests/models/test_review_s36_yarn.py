"""Review s36: YaRN RoPE scaling (Qwen2.5 / DeepSeek long-context configs) through import, our checkpoints,
export and KV-cached decoding, against transformers' own logits past the original context."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_parity_kit import assert_bad_rope_refused, max_diff  # noqa: E402

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402
from codefoundry.models.config import ModelConfig  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.transformer import KVCache, rope_tables  # noqa: E402

VOCAB, ORIGINAL, MAX_POS, HEAD_DIM, LENGTH = 96, 256, 1024, 32, 300
TOL = 1e-4
# Each a different branch of transformers' `_compute_yarn_parameters`: the defaults; every key given
# (untruncated ramp, an explicit attention factor); DeepSeek's mscale pair; no original length (it falls
# back to max_position_embeddings, which the HF config then sets to ORIGINAL).
YARNS = {
    "defaults": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "explicit": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "beta_fast": 16.0,
        "beta_slow": 2.0, "attention_factor": 1.25, "truncate": False,
    },
    "mscale": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "mscale": 0.707,
        "mscale_all_dim": 0.5,
    },
    "fallback": {"rope_type": "yarn", "factor": 4.0},
}  # fmt: skip
ARCHS = ("llama", "qwen2")


def hf_model(arch: str, rope_scaling: dict | None, seed: int = 0):
    """An fp32 LlamaForCausalLM or Qwen2ForCausalLM (Q/K/V biases) with random weights; `rope_scaling`
    goes in as transformers 5 reads it, beside rope_theta."""
    torch.manual_seed(seed)
    rope = {"rope_theta": 10000.0, **(rope_scaling or {"rope_type": "default"})}
    max_pos = ORIGINAL if rope_scaling and "original_max_position_embeddings" not in rope_scaling else MAX_POS
    config_class = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
    cfg = config_class(
        vocab_size=VOCAB, hidden_size=2 * HEAD_DIM, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_pos,
        initializer_range=0.1, rope_parameters=rope, tie_word_embeddings=False,
    )  # fmt: skip
    model_class = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    model = model_class(cfg).eval()
    if arch == "qwen2":
        with torch.no_grad():  # random biases: zeros would be dropped on import and test less
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    return model


def ids(length: int = LENGTH) -> torch.Tensor:
    assert length > ORIGINAL  # past the original context, where YaRN's bands differ from plain RoPE
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=[(a, k) for a in ARCHS for k in YARNS], ids=lambda p: "-".join(p))
def saved(request, tmp_path_factory):
    """(arch, kind, the HF model, a root dir holding hf/ (its save_pretrained) and cf/ (our import))."""
    arch, kind = request.param
    root = tmp_path_factory.mktemp(f"{arch}_{kind}")
    theirs = hf_model(arch, YARNS[kind])
    theirs.save_pretrained(str(root / "hf"))
    hf_import.import_hf(root / "hf", root / "cf", max_seq_len=MAX_POS)
    return arch, kind, theirs, root


def test_the_tiny_model_has_bands_on_every_side_of_the_ramp():
    # Otherwise parity would check one branch of the formula only: some bands turn more than beta_fast
    # times over the original context (kept), some fewer than beta_slow (divided by factor), some between.
    turns = [ORIGINAL / (2 * math.pi * 10000.0 ** (i / HEAD_DIM)) for i in range(0, HEAD_DIM, 2)]
    assert any(t > 32 for t in turns) and any(t < 1 for t in turns) and sum(1 < t < 32 for t in turns) >= 3


def test_import_has_transformers_logits_past_the_original_context(saved):
    arch, kind, theirs, root = saved
    ours = checkpoint.load(root / "cf")  # through our config.json, not only the import's memory
    scaling = ours.cfg.rope_scaling
    assert scaling["rope_type"] == "yarn" and scaling["original_max_position_embeddings"] == ORIGINAL
    assert len({ours.cfg, ours.cfg}) == 1  # still hashable
    # transformers' own attention factor, whichever way the config states it
    assert scaling["attention_factor"] == pytest.approx(theirs.model.rotary_emb.attention_scaling, abs=0)
    diff = max_diff(ours, theirs, ids())
    print(f"{arch}/{kind}: import max abs logit diff {diff:.2e}")
    assert diff <= TOL, f"max abs logit diff {diff:.2e}"
    plain = hf_model(arch, None)  # and the scaling matters at these lengths
    plain.load_state_dict(theirs.state_dict())
    assert max_diff(ours, plain, ids()) > 0.1


def test_rotary_tables_are_transformers_bit_for_bit(saved):
    _, _, theirs, root = saved
    ours = checkpoint.load(root / "cf")
    positions = torch.arange(LENGTH)[None]
    cos, sin = theirs.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    assert torch.equal(ours.rope_cos[:LENGTH], cos[0]) and torch.equal(ours.rope_sin[:LENGTH], sin[0])


def test_import_of_a_model_in_memory(saved):
    arch, kind, theirs, _ = saved
    assert max_diff(hf_import.import_hf(theirs, max_seq_len=MAX_POS), theirs, ids()) <= TOL


def test_export_round_trip_keeps_the_scaling_and_the_logits(saved):
    arch, kind, theirs, root = saved
    hf.export_hf(root / "cf", root / "out")
    config = json.loads((root / "out" / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == config["rope_parameters"]["rope_type"] == "yarn"
    back = transformers.AutoModelForCausalLM.from_pretrained(str(root / "out"), dtype=torch.float32).eval()
    assert type(back).__name__ == type(theirs).__name__
    diff = max_diff(checkpoint.load(root / "cf"), back, ids())
    print(f"{arch}/{kind}: export max abs logit diff {diff:.2e}")
    assert diff <= TOL
    assert max_diff(back, theirs, ids()) <= TOL  # the exported model is the source model
    assert max_diff(hf_import.import_hf(root / "out"), theirs, ids()) <= TOL


def test_legacy_rope_scaling_spelling_imports_the_same(saved, tmp_path):
    # Qwen2.5's released config.json (transformers 4.x): {"type": "yarn", ...} beside a top-level rope_theta
    arch, kind, theirs, root = saved
    config = json.loads((root / "hf" / "config.json").read_text())
    legacy = {k: v for k, v in config.pop("rope_parameters").items() if k not in ("rope_theta", "rope_type")}
    if kind == "fallback":
        legacy.pop("original_max_position_embeddings")  # transformers 5 saved the fallback it filled in
    config.update(rope_scaling={"type": "yarn", **legacy}, rope_theta=10000.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((root / "hf" / "model.safetensors").read_bytes())
    ours = hf_import.import_hf(tmp_path, max_seq_len=MAX_POS)
    assert ours.cfg.rope_scaling == checkpoint.load(root / "cf").cfg.rope_scaling
    assert max_diff(ours, theirs, ids()) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cached_decoding_and_generate_match_the_full_forward(arch):
    """Every decoding path (the cached forward, `generate`'s decode step) reads the scaled tables: token by
    token past the original context, their logits are the full forward's."""
    ours = hf_import.import_hf(hf_model(arch, YARNS["defaults"]), max_seq_len=MAX_POS)
    x = ids()[:1]  # (1, LENGTH)
    with torch.no_grad():
        full = ours(x).logits  # (1, LENGTH, V)
        cache = KVCache.empty(
            ours.cfg, 1, LENGTH, layers=ours.cfg.n_layers, device="cpu", dtype=torch.float32
        )
        steps = [ours(x[:, :40], cache=cache).logits]
        steps += [ours(x[:, t : t + 1], cache=cache).logits for t in range(40, LENGTH)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOL
    # generate: two prompts of different lengths (left padding, per-row positions), greedy past ORIGINAL
    prompts = [x[0, :50].tolist(), x[0, 10:90].tolist()]
    logprobs: list[list[float]] = []
    new = generate(ours, prompts, max_new_tokens=LENGTH - 90, logprobs=logprobs)
    for prompt, tokens, lps in zip(prompts, new, logprobs, strict=True):
        assert len(tokens) == LENGTH - 90
        seq = torch.tensor([prompt + tokens])
        with torch.no_grad():
            expected = torch.log_softmax(ours(seq).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        assert tokens == expected.argmax(-1).tolist()
        picked = expected.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        assert (picked - torch.tensor(lps)).abs().max().item() <= TOL


def test_a_minimal_yarn_config_fills_in_transformers_defaults(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, rope_scaling=YARNS["defaults"])
    assert cfg.rope_scaling == {
        **YARNS["defaults"], "beta_fast": 32.0, "beta_slow": 1.0,
        "attention_factor": 0.1 * math.log(4.0) + 1, "truncate": True,
    }  # fmt: skip
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
    below_one = ModelConfig(vocab_size=VOCAB, rope_scaling={**YARNS["defaults"], "factor": 0.5})
    assert below_one.rope_scaling["attention_factor"] == 1.0  # no scale below a factor of 1, as transformers
    # the scale multiplies cos and sin alike
    plain = ModelConfig(vocab_size=VOCAB, rope_scaling={**YARNS["defaults"], "attention_factor": 1.0})
    cos, sin = rope_tables(cfg, 8)
    plain_cos, plain_sin = rope_tables(plain, 8)
    factor = cfg.rope_scaling["attention_factor"]
    assert torch.allclose(cos, plain_cos * factor) and torch.allclose(sin, plain_sin * factor)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"rope_type": "yarn", "factor": 4.0}, "rope_scaling.original_max_position_embeddings"),
        ({**YARNS["defaults"], "factor": 0}, "rope_scaling.factor"),
        ({**YARNS["defaults"], "beta_fast": -1.0}, "rope_scaling.beta_fast"),
        ({**YARNS["defaults"], "beta_slow": float("nan")}, "rope_scaling.beta_slow"),
        ({**YARNS["defaults"], "attention_factor": 0.0}, "rope_scaling.attention_factor"),
        ({**YARNS["defaults"], "truncate": "yes"}, "rope_scaling.truncate"),
        ({**YARNS["defaults"], "mscale": 1.0}, "rope_scaling"),  # resolved into attention_factor on import
        ({"rope_type": "dynamic", "factor": 2.0}, "rope_scaling.rope_type"),
    ],
)
def test_an_invalid_yarn_config_is_refused_in_one_line(bad, field, tmp_path):
    with pytest.raises(ValueError, match=rf"^{field}\b") as e:
        ModelConfig(vocab_size=VOCAB, rope_scaling=bad)
    assert "\n" not in str(e.value)
    data = ModelConfig(vocab_size=VOCAB).to_dict() | {"rope_scaling": bad}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"config\.json: {field}\b"):
        ModelConfig.load(tmp_path / "config.json")


@pytest.mark.parametrize("field", ["rope_scaling", "rope_parameters"])
def test_dynamic_ntk_is_still_refused_saying_why(field, saved, tmp_path):
    _, _, _, root = saved
    config = json.loads((root / "hf" / "config.json").read_text())
    config[field] = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((root / "hf" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=rf": {field}=.*dynamic.*not supported \(.*running length") as e:
        hf_import.import_hf(tmp_path)
    assert "\n" not in str(e.value)


def test_an_hf_yarn_config_with_a_bad_value_is_refused_naming_the_source(saved, tmp_path):
    _, _, _, root = saved
    bad = {**YARNS["defaults"], "rope_theta": 10000.0, "beta_fast": "32"}
    assert_bad_rope_refused(
        root / "hf", tmp_path, bad, r"rope_scaling\.beta_fast must be a number > 0, got '32'"
    )


@pytest.mark.parametrize(
    "edit",
    [
        {"rope_parameters": {**YARNS["defaults"], "rope_theta": 10000.0, "factor": None}},  # 1024 / 256
        {"original_max_position_embeddings": 128},  # Phi-3's place: over the scaling's own 256
    ],
    ids=["null-factor", "top-level-original"],
)
@pytest.mark.parametrize("arch", ARCHS)
def test_what_transformers_derives_is_derived_alike(arch, edit, tmp_path):
    hf_model(arch, YARNS["defaults"]).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text()) | edit
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ours = hf_import.import_hf(tmp_path)
    assert ours.cfg.rope_scaling["factor"] == 4.0
    original = edit.get("original_max_position_embeddings", ORIGINAL)
    assert ours.cfg.rope_scaling["original_max_position_embeddings"] == original
    assert max_diff(ours, theirs, ids()) <= TOL
