"""Shared by the HF parity tests: token ids of a tiny vocabulary, the logits' largest difference, and the
check that a bad RoPE scaling in an HF config is refused in one line."""

import json
import re
from pathlib import Path

import pytest
import torch

from codefoundry.models.transformer import Transformer

VOCAB = 96


def ids(seed: int = 1, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def max_diff(ours: Transformer, theirs, x: torch.Tensor | None = None) -> float:
    """The largest difference of the two models' logits on `x` (default: `ids()`)."""
    x = ids() if x is None else x
    with torch.no_grad():
        expected = theirs(x).logits
        assert expected.abs().max() > 1.0  # not a degenerate near-zero comparison
        return (ours(x).logits - expected).abs().max().item()


def assert_bad_rope_refused(hf_dir: Path, tmp_path: Path, rope_parameters: dict, message: str) -> None:
    """An HF checkpoint (hf_dir's, copied to tmp_path) whose `rope_parameters` are these is refused in one
    line naming the source and matching `message`; without its factor, as a type the import cannot read."""
    from codefoundry.models import hf_import

    config = json.loads((hf_dir / "config.json").read_text())
    config["rope_parameters"] = rope_parameters
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=message) as e:
        hf_import.import_hf(tmp_path)
    assert str(e.value).startswith(str(tmp_path)) and "\n" not in str(e.value)
    del config["rope_parameters"]["factor"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    kind = re.escape(rope_parameters["rope_type"])
    with pytest.raises(
        ValueError, match=rf"rope_parameters=.*not supported \(rope_type '{kind}' needs 'factor'\)"
    ):
        hf_import.import_hf(tmp_path)
