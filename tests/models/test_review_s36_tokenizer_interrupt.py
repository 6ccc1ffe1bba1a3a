"""Ctrl-C during `codefoundry tokenizer train`, sent as a real SIGINT to a real process.

The BPE trainer (Rust) never checks for signals: a Ctrl-C during training took effect only when training
ended. It now ends the command at once (exit 130, "interrupted") and leaves no tokenizer in --out. A
Ctrl-C while the saved tokenizer is being measured said only "interrupted"; it now says the tokenizer was
saved. The harness below reports on stderr when the corpus has been read (training proper starts) and
when measuring starts, which it slows so that the signal lands inside it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

HARNESS = """
import sys, time
from codefoundry.models import tokenizer as cft
from codefoundry.cli import main

read_texts, measure = cft.read_texts, cft.measure

def loud_read_texts(files, **kw):
    yield from read_texts(files, **kw)
    print("corpus read", file=sys.stderr, flush=True)

def slow_measure(tok, files):
    print("measuring", file=sys.stderr, flush=True)
    time.sleep(60)
    return measure(tok, files)

cft.read_texts, cft.measure = loud_read_texts, slow_measure
sys.exit(main(sys.argv[1:]))
"""


def start(data: Path, out: Path, vocab_size: int) -> subprocess.Popen:
    argv = ["tokenizer", "train", "--data", str(data), "--vocab-size", str(vocab_size), "--out", str(out)]
    return subprocess.Popen([sys.executable, "-c", HARNESS, *argv], stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, line: str) -> None:
    for got in proc.stderr:
        if got.strip() == line:
            return
    raise AssertionError(f"the process ended before saying {line!r}")


def random_words(root: Path, files: int, words: int) -> Path:
    """Files of random identifiers: nearly every word distinct, so a large vocabulary's merges take long."""
    rng = random.Random(0)
    root.mkdir()
    for i in range(files):
        text = " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 14)))
                        for _ in range(words))  # fmt: skip
        (root / f"m{i}.py").write_text(text)
    return root


def test_ctrl_c_during_bpe_training_ends_the_command_at_once(tmp_path):
    data, out = random_words(tmp_path / "data", files=12, words=40_000), tmp_path / "tok"
    proc = start(data, out, vocab_size=60_000)  # about 10 s of merges after the corpus is read
    try:
        wait_for(proc, "corpus read")
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        rest = proc.communicate(timeout=120)[1]
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == "codefoundry tokenizer: interrupted"
    assert waited < 3, f"the interrupt took {waited:.1f} s: it waited for training to end"
    assert not out.exists()  # the directory it made for the tokenizer went too


def test_ctrl_c_while_measuring_says_the_tokenizer_was_saved(tmp_path):
    data, out = tmp_path / "data", tmp_path / "tok"
    data.mkdir()
    (data / "a.py").write_text("def add(a, b):\n    return a + b\n" * 50)
    proc = start(data, out, vocab_size=300)
    try:
        wait_for(proc, "measuring")
        os.kill(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == (
        f"codefoundry tokenizer: interrupted after {out / 'tokenizer.json'} was saved: only measuring its"
        " compression and round trip was cut short"
    )
    from codefoundry.models import tokenizer as cft

    tok = cft.load(out)  # usable: it encodes and decodes back
    assert tok.decode(tok.encode("return a + b").ids) == "return a + b"
