"""Review s35: an explicit `head_dim` that is not dim / n_heads (Mistral-NeMo's 5120 / 32 heads of 128),
checked against transformers' Llama logit for logit and token for token."""

import json
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_parity_kit import VOCAB, ids, max_diff  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402
from codefoundry.models.config import ModelConfig, config_for_size  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.train.metrics import flops_per_token  # noqa: E402

TOL = 1e-4


def hf_llama(seed: int = 0, **overrides):
    """A random tiny Llama whose 4 heads of 16 are 64 wide over a 32-wide residual stream."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, rms_norm_eps=1e-6,
        **{"head_dim": 16, **overrides},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # the norms start at exactly 1: make them count
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_hd")
    hf_llama().save_pretrained(str(out))
    return out


# ------------------------------------------------------------------------------------------------- config


def test_head_dim_defaults_to_dim_over_heads_and_follows_a_replaced_shape():
    cfg = ModelConfig(vocab_size=8, dim=64, n_heads=4, n_kv_heads=2)
    assert cfg.head_dim == 16
    # Derived, it follows the shape: a replace that kept 16 would have built 2 heads 32 wide in total.
    assert replace(cfg, n_heads=2, n_kv_heads=1).head_dim == 32
    assert replace(cfg, head_dim=8).head_dim == 8
    assert replace(replace(cfg, head_dim=8), n_heads=2, n_kv_heads=1).head_dim == 8


@pytest.mark.parametrize("bad", [0, -2, 7, True, 16.0, "16"])
def test_a_bad_head_dim_is_one_line_naming_it(bad):
    with pytest.raises(ValueError, match=r"head_dim") as e:
        ModelConfig(vocab_size=8, dim=64, n_heads=4, n_kv_heads=2, head_dim=bad)
    assert "\n" not in str(e.value)


def test_explicit_head_dim_lets_dim_be_any_width():
    cfg = ModelConfig(vocab_size=8, dim=50, n_heads=4, n_kv_heads=2, head_dim=8)
    attn = Transformer(cfg).layers[0].attn
    assert attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 50)
    assert attn.out.weight.shape == (50, 32)


def test_config_files_with_and_without_head_dim_load(tmp_path):
    cfg = ModelConfig(vocab_size=8, dim=64, n_heads=4, n_kv_heads=2)
    old = {k: v for k, v in cfg.to_dict().items() if k != "head_dim"}  # a file from before the field
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert ModelConfig.load(tmp_path / "old.json") == cfg
    assert cfg.to_dict()["head_dim"] is None  # derived widths stay derived on disk
    wide = replace(cfg, head_dim=32)
    wide.save(tmp_path / "wide.json")
    assert json.loads((tmp_path / "wide.json").read_text())["head_dim"] == 32
    assert ModelConfig.load(tmp_path / "wide.json") == wide
    (tmp_path / "bad.json").write_text(json.dumps({**old, "head_dim": 3}))
    with pytest.raises(ValueError, match=r"bad\.json: head_dim=3 must be even"):
        ModelConfig.load(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------ import, generation


def test_import_matches_transformers_logits(llama_dir):
    theirs = hf_llama()
    for src in (llama_dir, theirs):  # from disk and in memory
        ours = hf_import.import_hf(src)
        assert ours.cfg.head_dim == 16 and ours.cfg.dim == 32
        diff = max_diff(ours, theirs)
        assert diff <= TOL, f"max abs logit diff {diff:.2e}"


def test_import_of_a_derived_head_dim_keeps_the_config_as_before(tmp_path):
    hf_llama(head_dim=8).save_pretrained(str(tmp_path))  # 32 / 4 = 8: nothing to record
    assert hf_import.import_hf(tmp_path).cfg.to_dict()["head_dim"] is None


def test_greedy_generation_with_the_cache_matches_transformers(llama_dir):
    theirs, ours = hf_llama(), hf_import.import_hf(llama_dir)
    prompts = [[5, 17, 3, 40, 2, 9], [60, 1, 33]]  # different lengths: the padded, positioned path too
    got = generate(ours, prompts, max_new_tokens=12)
    for prompt, new in zip(prompts, got, strict=True):
        with torch.no_grad():
            out = theirs.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                pad_token_id=0, eos_token_id=None,
            )  # fmt: skip
        assert new == out[0, len(prompt) :].tolist()


def test_cached_decoding_matches_full_forwards():
    # Our own reference, independent of transformers: the no-cache argmax loop.
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=24,
                      max_seq_len=64, init_std=0.1)  # fmt: skip
    model = Transformer(cfg).eval()
    prompt = [7, 8, 9, 10]
    x = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(10):
            x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generate(model, [prompt], max_new_tokens=10) == [x[0, len(prompt) :].tolist()]


# ------------------------------------------------------------------------------------------------- export


def test_export_round_trip_is_exact(llama_dir, tmp_path):
    ours = hf_import.import_hf(llama_dir, tmp_path / "cf")
    report = hf.export_hf(tmp_path / "cf", tmp_path / "out")
    assert report["architecture"] == "LlamaForCausalLM"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["head_dim"] == 16
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    assert exported.config.head_dim == 16
    assert max_diff(ours, exported.eval()) <= TOL
    back = hf_import.import_hf(tmp_path / "out")
    assert back.cfg == ours.cfg
    x = ids(seed=3)
    with torch.no_grad():
        assert (back(x).logits - ours(x).logits).abs().max() <= 1e-5
    assert checkpoint.load(tmp_path / "cf").cfg.head_dim == 16


# ---------------------------------------------------------------------------------------------- training


def test_a_pretraining_size_with_head_dim_set_trains_a_step():
    cfg = config_for_size("mini", 512, max_seq_len=32, head_dim=64)  # 4 heads of 64 over a 128-wide stream
    model = Transformer(cfg)
    assert model.layers[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 64, 128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = ids(seed=5, shape=(2, 32)) % 512
    losses = []
    for _ in range(2):
        loss = model(x[:, :-1], x[:, 1:]).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]


def test_flops_count_the_attention_width_not_dim():
    T = 16
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, max_seq_len=T)
    model = Transformer(cfg)
    x = ids(seed=6, shape=(1, T)) % 64
    with FlopCounterMode(display=False) as counter:
        model(x, x).loss.backward()
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    # The counter misses attention's scores and values (our C kernel). Per token and layer: q.k and
    # p.v over T keys, 2 * T * head_dim each per head, times 3 for the backward: 12 * T * 4 heads * 16.
    attention = 12 * cfg.n_layers * T * 4 * 16
    assert flops_per_token(model, T) - 6.0 * norms - attention == counter.get_total_flops() / T
