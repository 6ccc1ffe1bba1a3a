"""Review s35: Hugging Face import and export against checkpoints as transformers writes them."""

import json
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
tokenizers = pytest.importorskip("tokenizers")

from codefoundry.models import checkpoint, hf, hf_import  # noqa: E402

VOCAB = 96
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _tiny(config_class, model_class, seed: int, overrides: dict):
    torch.manual_seed(seed)
    cfg = config_class(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, **overrides,
    )  # fmt: skip
    return model_class(cfg).eval()


def hf_llama(seed: int = 0, **overrides):
    return _tiny(transformers.LlamaConfig, transformers.LlamaForCausalLM, seed, overrides)


def hf_qwen2(seed: int = 0, **overrides):
    return _tiny(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, seed, overrides)


def save_tokenizer(out, *, chat_template: str | None) -> None:
    """A small BPE tokenizer saved by transformers itself (which puts a chat template in its own file)."""
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<s>": 26, "</s>": 27}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out))


def same_logits(ours, theirs, ids) -> float:
    with torch.no_grad():
        return (ours(ids).logits.float() - theirs(ids).logits.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------- tokenizer


def test_a_chat_template_file_survives_import_then_export(tmp_path):
    # transformers saves the chat template as chat_template.jinja; only tokenizer.json,
    # tokenizer_config.json and special_tokens_map.json were copied, so an instruct model imported and
    # exported again lost its chat template (and chat prompts went out unformatted).
    hf_llama().save_pretrained(str(tmp_path / "hf"))
    save_tokenizer(tmp_path / "hf", chat_template=TEMPLATE)
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()
    hf_import.import_hf(tmp_path / "hf", tmp_path / "cf")
    hf.export_hf(tmp_path / "cf", tmp_path / "out")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert tok.chat_template == TEMPLATE
    # A later tokenizer without a chat template replaces this one's, template included.
    hf_llama(seed=1).save_pretrained(str(tmp_path / "plain"))
    save_tokenizer(tmp_path / "plain", chat_template=None)
    hf_import.import_hf(tmp_path / "plain", tmp_path / "cf")
    assert not (tmp_path / "cf" / "chat_template.jinja").exists()


def test_a_reimport_leaves_nothing_of_the_earlier_imports_tokenizer(tmp_path):
    # An import over an earlier import replaces it, but a source with no tokenizer left the earlier
    # model's tokenizer files beside the new model's weights, where they passed for its own.
    hf_llama().save_pretrained(str(tmp_path / "a"))
    save_tokenizer(tmp_path / "a", chat_template=None)
    hf_llama(seed=1).save_pretrained(str(tmp_path / "b"))  # no tokenizer files
    hf_import.import_hf(tmp_path / "a", tmp_path / "cf")
    assert (tmp_path / "cf" / "tokenizer.json").is_file()
    hf_import.import_hf(tmp_path / "b", tmp_path / "cf")
    assert not [n for n in checkpoint.TOKENIZER_FILES if (tmp_path / "cf" / n).exists()]


@pytest.mark.parametrize("config_eos", [None, "a"])
def test_export_takes_special_tokens_from_special_tokens_map_as_transformers_does(tmp_path, config_eos):
    # Older tokenizer saves name bos/eos in special_tokens_map.json (and transformers lets that file
    # override a tokenizer_config.json without added_tokens_decoder); only tokenizer_config.json was
    # read, so the export's config.json had eos_token_id null (or "a") where the tokenizer says </s>,
    # and transformers' generate never stopped at the end of a text.
    hf_llama().save_pretrained(str(tmp_path / "hf"))
    save_tokenizer(tmp_path / "hf", chat_template=None)
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if config_eos is not None:
        tok_config["eos_token"] = config_eos
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(tok_config))
    special = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}
    (tmp_path / "hf" / "special_tokens_map.json").write_text(json.dumps(special))
    hf_import.import_hf(tmp_path / "hf", tmp_path / "cf")
    report = hf.export_hf(tmp_path / "cf", tmp_path / "out")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert theirs.eos_token == "</s>"
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    for role in ("bos", "eos", "pad"):
        key = f"{role}_token_id"
        assert report[key] == generation[key] == getattr(config, key) == getattr(theirs, key), key


# ---------------------------------------------------------------------------------------------- config


def test_a_sliding_window_is_checked_against_the_max_seq_len_asked_for(tmp_path):
    # A window as long as max_position_embeddings changes nothing up to there, so the import was allowed,
    # also with max_seq_len raised past it: beyond the window the HF model attends to fewer tokens.
    theirs = hf_qwen2(use_sliding_window=True, sliding_window=64, max_window_layers=0)
    theirs.save_pretrained(str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.pop("layer_types", None)  # as transformers 4.x wrote it: the window alone says which layers
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    assert same_logits(hf_import.import_hf(tmp_path / "hf"), theirs, ids) < 1e-4
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'hf'}: sliding_window=64 is not supported")):
        hf_import.import_hf(tmp_path / "hf", max_seq_len=128)


# ---------------------------------------------------------------------------------------------- weights


def test_weights_stored_in_two_dtypes_load_in_the_configs_one(tmp_path):
    # Norms kept in fp32 beside bf16 matrices made a model of mixed dtypes, whose RMSNorm warned of the
    # mismatch and computed in fp32 what transformers computes in bf16 (it loads all in config's dtype).
    from safetensors.torch import load_file, save_file

    hf_llama().to(torch.bfloat16).save_pretrained(str(tmp_path / "hf"))
    path = tmp_path / "hf" / "model.safetensors"
    state = {k: v.float() if "norm" in k else v for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata={"format": "pt"})
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert {p.dtype for p in theirs.parameters()} == {torch.bfloat16}
    ours = hf_import.import_hf(tmp_path / "hf")
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    assert same_logits(ours, theirs, ids) < 0.05  # bf16 kernels differ in rounding only
    assert hf_import.import_hf(tmp_path / "hf", dtype=torch.float32).embed.weight.dtype == torch.float32


def test_export_refuses_to_overwrite_a_hugging_face_checkpoint_it_did_not_write(tmp_path):
    # Any directory whose config.json has a model_type passed for an earlier export: exported into the
    # directory the model was imported from, the export replaced its weights and removed its shard index.
    theirs = hf_llama()
    theirs.save_pretrained(str(tmp_path / "hf"), max_shard_size="20KB")
    hf_import.import_hf(tmp_path / "hf", tmp_path / "cf")
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / 'hf'}: holds a Hugging Face checkpoint this")
    ):
        hf.export_hf(tmp_path / "cf", tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert same_logits(reloaded, theirs, ids) == 0
    hf.export_hf(tmp_path / "cf", tmp_path / "out")
    hf.export_hf(tmp_path / "cf", tmp_path / "out")  # a rerun over its own export is still allowed


def test_the_conversion_frees_each_hf_tensor_it_has_converted():
    # The caller's dict kept every HF tensor alive until the import returned, beside the concatenated
    # Q/K/V and gate/up copies: a peak of about twice the model (28 GB for a 7B model in bf16).
    import gc
    import weakref

    theirs = hf_llama()
    sd = {k: v.detach().clone() for k, v in theirs.state_dict().items()}
    fused = [weakref.ref(v) for k, v in sd.items() if k.endswith(("q_proj.weight", "gate_proj.weight"))]
    hf_dict = theirs.config.to_dict()
    cfg = hf_import.config_from_hf(hf_dict, where="tiny")
    state, _ = hf_import._state_from_hf(sd, hf_dict, cfg, where="tiny")
    gc.collect()
    assert fused and not [r for r in fused if r() is not None]
    ours = hf_import.import_hf(theirs)  # and the model is still whole
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    assert same_logits(ours, theirs, ids) < 1e-4


def test_use_sliding_window_in_no_layer_is_imported(tmp_path):
    # transformers slides only in the layers from max_window_layers on (its config.json lists them in
    # layer_types); with max_window_layers >= num_hidden_layers no layer slides, yet use_sliding_window
    # alone had the import refused. A sliding layer is still refused, unless the window spans max_seq_len.
    theirs = hf_qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert theirs.config.layer_types == ["full_attention"] * 2
    theirs.save_pretrained(str(tmp_path / "hf"))
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))  # past the window
    assert same_logits(hf_import.import_hf(tmp_path / "hf"), theirs, ids) < 1e-4
    hf_qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=1).save_pretrained(
        str(tmp_path / "s")
    )
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 's'}: layer_types=")):
        hf_import.import_hf(tmp_path / "s")
    assert hf_import.import_hf(tmp_path / "s", max_seq_len=8).cfg.max_seq_len == 8
