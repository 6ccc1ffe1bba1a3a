"""On a CUDA device (opt in with `-m gpu`; skipped without one): generation, compiled training's gradients, a
bf16 pretraining run and the Hugging Face export on the GPU, each checked against the CPU, eager mode or the
exported model."""

from __future__ import annotations

import contextlib
import math
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.generate import generate  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contextlib.contextmanager
def exact_fp32():
    """fp32 matmuls without TF32, so GPU and CPU logits agree to float rounding."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config_for_size("tiny", 300, max_seq_len=128, init_std=0.3, **kw)).eval()


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 300, (n,), generator=g).tolist() for n in (1, 6, 11, 4)]


def test_greedy_generation_on_cuda_equals_the_cpu():
    model, prompts = _model(), _prompts()
    on_cpu = generate(model, prompts, max_new_tokens=24)
    with exact_fp32():
        on_gpu = generate(model.to("cuda"), prompts, max_new_tokens=24)
    assert on_gpu == on_cpu


def test_bf16_sampling_on_cuda_records_finite_logprobs():
    model = _model().to("cuda", torch.bfloat16)
    logprobs: list[list[float]] = []
    out = generate(
        model, _prompts(), max_new_tokens=16, temperature=1.0, top_p=0.9, seed=0, logprobs=logprobs
    )
    assert [len(r) for r in out] == [len(r) for r in logprobs] == [16] * 4
    assert all(math.isfinite(x) and x <= 0 for row in logprobs for x in row)


def test_hf_export_gives_the_same_logits_on_cuda():
    pytest.importorskip("transformers")
    from codefoundry.models.hf import to_transformers

    model = _model()
    hf = to_transformers(model).to("cuda")
    model.to("cuda")
    ids = torch.randint(0, 300, (2, 40), device="cuda")
    with exact_fp32(), torch.inference_mode():
        diff = (model(ids).logits - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_compiled_training_on_cuda_gets_the_eager_gradients():
    # torch 2.11's compile on CUDA once turned the fused head's in-place loss into zero gradients, and a
    # compiled run then did not learn at all.
    model = _model().to("cuda")
    ids = torch.randint(0, 300, (4, 33), device="cuda")
    grads = {}
    for name, fn in (("eager", model), ("compiled", torch.compile(model))):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(ids[:, :-1], ids[:, 1:], logits=False).loss
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    rel = (grads["compiled"] - grads["eager"]).norm() / grads["eager"].norm()
    assert grads["eager"].norm() > 0 and rel < 2e-2


def test_pretraining_in_bf16_on_cuda(tmp_path):
    from codefoundry.train.pretrain import PretrainConfig, pretrain

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in cft.default_corpus()[:12]:
        shutil.copyfile(path, corpus / path.name)
    cft.train(sorted(corpus.iterdir()), vocab_size=512, out=tmp_path / "tok")
    cfg = PretrainConfig(
        data=str(corpus), tokenizer=str(tmp_path / "tok"), out=str(tmp_path / "run"), size="tiny", steps=20,
        batch_size=8, seq_len=128, log_every=5, eval_every=0, save_every=0, eval_batches=2, progress=False,
        final_eval=False, device="cuda",
    )  # fmt: skip
    summary = pretrain(cfg)
    assert summary["device"].startswith("cuda") and summary["dtype"] == "bfloat16"
    assert math.isfinite(summary["val_loss"]) and summary["val_loss"] < summary["unigram_loss"] + 1.0
    assert summary["mfu"] > 0
