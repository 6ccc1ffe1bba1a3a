"""The SFT loop on CPU with a tiny model: response-token normalisation across gradient accumulation,
learning a planted reply, outputs (metrics, checkpoint the `cf:` backend chats with), exact resume,
the command line, and errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from tiny_kit import tiny_checkpoint  # noqa: E402

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.models import checkpoint  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.train import metrics as M  # noqa: E402
from codefoundry.train import sft_data as D  # noqa: E402
from codefoundry.train.sft import SFTConfig, SFTRun, accumulate, sft  # noqa: E402
from codefoundry.train.trainer_state import CHECKPOINT  # noqa: E402

NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo", "kim", "lu", "max", "ned"]


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A planted fact: the reply to "greet NAME" is always "hello NAME!"."""
    path = tmp_path_factory.mktemp("data") / "greet.jsonl"
    rows = []
    for i in range(60):
        name = NAMES[i % len(NAMES)]
        if i % 2:
            rows.append({"prompt": f"greet {name}", "completion": f"hello {name}!"})
        else:
            msgs = [
                {"role": "user", "content": f"greet {name}"},
                {"role": "assistant", "content": f"hello {name}!"},
            ]
            rows.append({"messages": msgs})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(init_ckpt, data, out, **overrides) -> SFTConfig:
    base = dict(init=str(init_ckpt), data=str(data), out=str(out), seq_len=64, batch_size=2, grad_accum=2,
                steps=4, lr=3e-3, warmup=2, eval_fraction=0.1, log_every=1, progress=False, device="cpu")  # fmt: skip
    return SFTConfig(**{**base, **overrides})


def grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def test_one_micro_batch_of_four_equals_four_of_one(init_ckpt):
    tok = cft.load(init_ckpt)
    r = D.Renderer(tok)
    # Replies of very different lengths: a mean of per-micro-batch means would weigh them differently.
    exs = [r.chat((("user", f"q{i}"), ("assistant", "word " * k))) for i, k in enumerate([1, 9, 3, 20])]
    model = checkpoint.load(init_ckpt).float().train()
    device = torch.device("cpu")
    one = accumulate(model, [D.collate([[e] for e in exs], pad_id=0)], device=device)
    g_one = grads(model)
    model.zero_grad(set_to_none=True)
    four = accumulate(model, [D.collate([[e]], pad_id=0) for e in exs], device=device)
    g_four = grads(model)
    assert one["response_tokens"] == four["response_tokens"] == sum(e.n_targets for e in exs)
    assert one["loss"] == pytest.approx(four["loss"], rel=1e-5)
    for a, b in zip(g_one, g_four, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # The test has teeth: the average of micro-batch means gives another gradient.
    model.zero_grad(set_to_none=True)
    for e in exs:
        (accumulate_mean(model, D.collate([[e]], pad_id=0)) / 4).backward()
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(g_one, grads(model), strict=True))


def accumulate_mean(model, batch):
    logits = model(batch.ids, positions=batch.positions, mask=batch.mask).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)


@pytest.fixture(scope="module")
def trained(init_ckpt, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = config(init_ckpt, data, out, steps=40, eval_every=20, save_every=20, batch_size=4, grad_accum=1)
    return cfg, sft(cfg)


def test_sft_learns_the_planted_reply_and_reports(trained):
    cfg, s = trained
    assert s["step"] == 40 and s["val_loss"] < 0.5 * s["initial_val_loss"]
    assert s["train_data"]["examples"] == 54 and s["eval_data"]["examples"] == 6
    assert s["train_sequences"] < 54  # packed: several examples per sequence
    records = M.read_metrics(Path(cfg.out) / M.METRICS)
    assert [r["step"] for r in records if "val_loss" in r] == [0, 20, 40]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 41))
    assert all(r["response_tokens"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
    out = Path(cfg.out)
    assert (out / "summary.json").is_file() and (out / "loss.png").is_file() and any((out / "tb").iterdir())


def test_the_final_checkpoint_chats_through_the_cf_backend(trained):
    from codefoundry.models.backends import SamplingParams, load_backend

    cfg, s = trained
    backend = load_backend(f"cf:{s['checkpoint']}")
    replies = backend.chat([[{"role": "user", "content": "greet bob"}]], SamplingParams(max_tokens=12))
    assert replies[0][0].startswith("hello")  # learned the planted reply (greedy), stopped at <|im_end|>


class KilledAfterFirstSave(SFTRun):
    """A run that dies right after its first checkpoint, as a kill between steps would leave it."""

    def save(self) -> None:
        super().save()
        raise KeyboardInterrupt


def test_resume_continues_bit_identically(init_ckpt, data, tmp_path):
    full = config(init_ckpt, data, tmp_path / "full", steps=6, save_every=3)
    want = sft(full)
    cut = replace(full, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        KilledAfterFirstSave(cut).train()
    assert (tmp_path / "cut" / CHECKPOINT).is_dir()
    got = sft(replace(cut, resume=True))
    assert got["param_digest"] == want["param_digest"]
    losses = [
        [r["loss"] for r in M.read_metrics(Path(p) / M.METRICS) if "loss" in r] for p in (full.out, cut.out)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    with pytest.raises(ValueError, match="cannot resume with seq_len=32"):
        SFTRun(replace(cut, resume=True, seq_len=32))
    with pytest.raises(ValueError, match="nothing to resume"):
        SFTRun(replace(cut, out=str(tmp_path / "empty"), resume=True))


def test_without_packing_each_sequence_is_one_example(init_ckpt, data, tmp_path):
    run = SFTRun(config(init_ckpt, data, tmp_path, packing=False, eval_fraction=0.0))
    assert len(run.train_split.rows) == 60 and run.eval_batches == []


def test_cli_sft_smoke_and_one_line_errors(init_ckpt, data, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["sft", "--init", str(init_ckpt), "--data", str(data), "--out", str(out), "--steps", "2",
            "--seq-len", "64", "--batch-size", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 0
    line = capsys.readouterr().out
    assert "step 2/2" in line and str(out / CHECKPOINT) in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n')
    argv[argv.index(str(data))] = str(bad)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"codefoundry sft: {bad}:2: `completion` must be a string, it is missing"
    argv[argv.index(str(bad))] = str(data)
    argv[argv.index("--seq-len") + 1] = "4096"
    assert cli_main(argv) == 2
    assert "exceeds the model's max_seq_len=128" in capsys.readouterr().err


def test_config_checks_name_the_field(init_ckpt, data, tmp_path):
    with pytest.raises(ValueError, match="SFTConfig.overlong"):
        config(init_ckpt, data, tmp_path, overlong="wrap")
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        SFTRun(config(tmp_path, data, tmp_path / "o"))


def test_a_hugging_face_qwen2_checkpoint_fine_tunes_with_packing(data, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = cft.train(cft.default_corpus()[:15], vocab_size=400, out=tmp_path / "hf")  # Qwen2's chat tokens
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    hf_model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    run = SFTRun(SFTConfig(init=str(tmp_path / "hf"), data=str(data), out=str(tmp_path / "o"), seq_len=64,
                           steps=2, batch_size=2, progress=False, device="cpu"))  # fmt: skip
    # The imported model is the HF model: the first example, packed among others, gets HF's logits alone.
    batch = D.collate([[run.train_split.examples[i] for i in run.train_split.rows[0]]], pad_id=0)
    first = run.train_split.examples[run.train_split.rows[0][0]]
    with torch.no_grad():
        ours = run.raw(batch.ids, positions=batch.positions, mask=batch.mask).logits[0, : len(first)]
        theirs = hf_model(torch.from_numpy(first.ids)[None]).logits[0]
    assert len(run.train_split.rows[0]) > 1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    summary = run.train()
    assert summary["step"] == 2 and Path(summary["checkpoint"], "model.safetensors").is_file()
