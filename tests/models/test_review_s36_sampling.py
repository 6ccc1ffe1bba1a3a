"""Review of session 36's sampling: a checkpoint's own min_p never reaches the hf: backend's sampling, and a
draw never lands on a zero-probability token when the cumulative sum is a parallel scan's (CUDA's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codefoundry.models.sampling import _draw  # noqa: E402


def test_hf_sampling_without_min_p_ignores_the_checkpoints_min_p(tmp_path: Path) -> None:
    """transformers fills every knob left None from the checkpoint's generation_config.json: min_p 0 was
    left None, so a checkpoint shipping "min_p": 1.0 sampled only its top token at any temperature."""
    pytest.importorskip("transformers")
    from test_backends_hf import MAX_NEW, _build

    from codefoundry.models.backends import SamplingParams, load_backend

    path, _, _ = _build(tmp_path, chat_template=None)
    shipped = tmp_path / "shipped"
    shutil.copytree(path, shipped)
    config = json.loads((shipped / "generation_config.json").read_text())
    (shipped / "generation_config.json").write_text(json.dumps(config | {"min_p": 1.0}))
    backend = load_backend(f"hf:{shipped}", device="cpu")
    greedy = backend.complete(["def"], SamplingParams(max_tokens=MAX_NEW))[0][0]
    hot = backend.complete(["def"], SamplingParams(n=6, temperature=5.0, max_tokens=MAX_NEW, seed=2))[0]
    assert set(hot) != {greedy}  # a flat distribution at temperature 5: the samples differ
    # Asked for, min_p still cuts: 1.0 keeps the top token only.
    cut = SamplingParams(n=3, temperature=5.0, max_tokens=MAX_NEW, seed=2, min_p=1.0)
    assert backend.complete(["def"], cut) == [[greedy] * 3]


def _parallel_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 cumsum as a parallel scan can round it (pytorch#21780): the entry of each zero-probability
    token after the first comes out an ulp above its predecessor's. float64 scans stay exact."""
    sequential = torch.Tensor.cumsum

    def scan(self: torch.Tensor, dim: int, **kw) -> torch.Tensor:
        out = sequential(self, dim, **kw)
        if out.dtype != torch.float32:
            return out
        bumped = torch.nextafter(out, torch.full_like(out, float("inf")))
        zero = self == 0
        zero[..., 0] = False
        return torch.where(zero, bumped, out)

    monkeypatch.setattr(torch.Tensor, "cumsum", scan)


def test_a_draw_never_takes_a_zero_probability_token_from_a_parallel_scans_cdf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _parallel_scan(monkeypatch)
    probs = torch.tensor([[0.25, 0.0, 0.75], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    # 0.25 lands in the zero's gap of row 0; the largest uniform, which fp32 rounds to 1, lands in the gap
    # row 1's trailing zero opened above its total.
    uniforms = np.array([0.25, 1 - 2.0**-53, 0.0])
    assert _draw(probs, uniforms).tolist() == [2, 1, 2]
    # Any uniform: only the tokens of positive probability.
    grid = np.linspace(0, 1 - 2.0**-53, 4001)
    for row in probs:
        drawn = set(_draw(row.expand(len(grid), 3).contiguous(), grid).tolist())
        assert drawn == set(row.nonzero().flatten().tolist())
