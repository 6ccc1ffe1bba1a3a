"""Decontamination on files the test writes: a HumanEval solution, an MBPP train-split solution and a
user-named file's content hidden inside larger files are dropped with the right benchmark named; clean
files, and a file sharing only n-1 tokens with a solution, are kept; reformatting does not hide a solution."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys

import pytest

from codefoundry.data import decontam
from codefoundry.data.decontam import ContaminationIndex, DecontamConfig, contaminated_by, tokenize
from codefoundry.jsonl import RecordError
from codefoundry.tasks import humaneval, mbpp

try:  # the default benchmark list includes MBPP, read from shared/data/mbpp or $CODEFOUNDRY_MBPP_DIR
    mbpp.data_dir()
except FileNotFoundError as e:
    pytest.skip(str(e), allow_module_level=True)

PRIVATE = '''def rotate_ledger_entries(ledger, offset):
    """Move every entry of the ledger forward by offset places, wrapping around the end."""
    size = len(ledger)
    return [ledger[(position - offset) % size] for position in range(size)]
'''

CLEAN = '''import argparse


class Inventory:
    """Counts of items in a warehouse, with reorder thresholds per item."""

    def __init__(self, thresholds):
        self.thresholds = dict(thresholds)
        self.stock = {name: 0 for name in self.thresholds}

    def receive(self, name, quantity):
        self.stock[name] = self.stock.get(name, 0) + quantity

    def to_reorder(self):
        return sorted(name for name, low in self.thresholds.items() if self.stock.get(name, 0) < low)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="print the items to reorder")
    parser.add_argument("thresholds")
    print(Inventory({}).to_reorder())
'''


@pytest.fixture(scope="module")
def extra_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "private_eval.jsonl"
    path.write_text(json.dumps({"task_id": "P/0", "canonical_solution": PRIVATE}) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def index(extra_file):
    return ContaminationIndex.from_config(DecontamConfig(extra_files=(str(extra_file),)))


def hide(snippet: str) -> str:
    """`snippet` between unrelated code, as it would sit in a real file."""
    return f"{CLEAN}\n\n{snippet}\n\n{CLEAN}"


def first_tokens(text: str, k: int) -> str:
    """The text up to the end of its k-th token."""
    return text[: list(re.finditer(r"\w+", text))[k - 1].end()]


def test_hidden_benchmark_texts_are_dropped_with_the_benchmark_named(index, tmp_path):
    he = humaneval.load()[0]  # has_close_elements
    mb = next(p for p in mbpp.load("full", "train") if len(tokenize(p.canonical_solution)) >= 40)
    files = {
        "humaneval.py": hide(he.prompt + he.canonical_solution),
        "mbpp.py": hide(mb.canonical_solution),
        "private.py": hide(PRIVATE),
        "clean.py": CLEAN,
        "notes.md": "# Notes\n\nWe ship on Fridays; the inventory tool prints what to reorder.\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    verdicts = {name: contaminated_by(index, (tmp_path / name).read_text(encoding="utf-8")) for name in files}
    assert verdicts == {"humaneval.py": "humaneval", "mbpp.py": "mbpp", "private.py": "private_eval.jsonl",
                        "clean.py": None, "notes.md": None}  # fmt: skip
    assert mb.metadata["mbpp_id"] >= 601  # a train-split task: every MBPP split is indexed
    assert index.matches(files["private.py"]) == ["private_eval.jsonl"]


def test_a_shared_run_shorter_than_n_is_kept_and_n_tokens_are_dropped(index):
    solution = humaneval.load()[0].canonical_solution
    n = index.config.ngram
    # unknown marker words on both sides, so no window can borrow a token from the surroundings
    around = "zzqmarker_before {} zzqmarker_after"
    assert index.contaminated(around.format(first_tokens(solution, n - 1))) is None
    assert index.contaminated(around.format(first_tokens(solution, n))) == "humaneval"


def test_reformatting_does_not_hide_a_solution(index):
    """Tokens are lower-cased \\w runs: indentation, line breaks, spacing, quotes and case are invisible."""
    he = humaneval.load()[0]
    body = he.canonical_solution
    assert len(tokenize(body)) >= 2 * index.config.ngram
    variants = {
        "tabs": body.replace("    ", "\t"),
        "blank lines dropped, backslash continuations": re.sub(r"\n\s*\n", "\n", body).replace(
            ":\n", ": \\\n"
        ),
        "spaced operators": body.replace("-", " - ").replace("<", "  <  ").replace("!=", " != "),
        "upper case": body.upper(),
        "black-style quotes and parens": body.replace("(", "( ").replace(")", " )"),
    }
    for name, variant in variants.items():
        assert variant != body
        assert index.contaminated(hide(variant)) == "humaneval", name
    renamed = body.replace("idx", "a").replace("elem", "b").replace("distance", "d").replace("numbers", "xs")
    assert index.contaminated(hide(renamed)) is None  # renaming every identifier is a stated limit


def test_degenerate_ngrams_are_not_indexed():
    config = DecontamConfig(ngram=13)
    numbers = "assert f([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == 0"
    toy = ContaminationIndex({"toy": [numbers, "letters = 'a b c d e f g h i j k l m n o p'"]}, config=config)
    assert toy.contaminated("TABLE = [" + ", ".join(["0"] * 40) + "]") is None
    assert toy.contaminated("ALPHABET = 'a b c d e f g h i j k l m n o p q r s t'") is None


def test_min_matches_counts_distinct_ngrams():
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu"  # exactly 13 tokens
    for k, verdict in ((1, "toy"), (2, None)):
        toy = ContaminationIndex({"toy": [text]}, config=DecontamConfig(min_matches=k))
        assert toy.contaminated(f"{text}\n# and again: {text}") == verdict  # one distinct n-gram, twice
    toy = ContaminationIndex({"toy": [text + " xi"]}, config=DecontamConfig(min_matches=2))
    assert toy.contaminated(text + " xi") == "toy"  # two distinct n-grams


def test_most_shared_ngrams_name_the_benchmark():
    a = "one two three four five six seven eight nine ten eleven twelve thirteen"
    b = a + " fourteen fifteen sixteen"
    toy = ContaminationIndex({"first": [a], "second": [b]})
    assert toy.counts(b) == {"first": 1, "second": 4}
    assert toy.contaminated(b) == "second" and toy.matches(b) == ["first", "second"]
    assert toy.explain(a) == {"first": [a], "second": [a]}


def test_index_pickles_and_is_identical_in_a_fresh_process(index, extra_file):
    doc = hide(humaneval.load()[0].canonical_solution)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.contaminated(doc) == index.contaminated(doc) == "humaneval"
    code = ("import hashlib, sys; from codefoundry.data.decontam import ContaminationIndex, DecontamConfig; "
            "i = ContaminationIndex.from_config(DecontamConfig(extra_files=(sys.argv[1],))); "
            "print(hashlib.sha256(i._hashes.tobytes() + i._masks.tobytes()).hexdigest())")  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = [sys.executable, "-c", code, str(extra_file)]
    out = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    here = hashlib.sha256(index._hashes.tobytes() + index._masks.tobytes()).hexdigest()
    assert out.stdout.strip() == here


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'humanevil'.*humaneval"):
        ContaminationIndex.from_benchmarks(["humanevil"])
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        ContaminationIndex.from_benchmarks([], [missing])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "def f(x):\\n    return x"}\n{"score": 3}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: no text field"):
        ContaminationIndex.from_benchmarks([], [bad])
    with pytest.raises(ValueError, match="ngram"):
        DecontamConfig(ngram=0)


def test_plain_text_extra_file_is_one_text(tmp_path):
    source = tmp_path / "secret_solution.py"
    source.write_text(PRIVATE, encoding="utf-8")
    toy = ContaminationIndex.from_benchmarks([], [source])
    assert toy.names == ("secret_solution.py",)
    assert toy.contaminated(hide(PRIVATE.replace("    ", "  "))) == "secret_solution.py"
    assert toy.contaminated(CLEAN) is None


def test_public_api():
    assert sorted(decontam.__all__) == [
        "ContaminationIndex", "DecontamConfig", "benchmark_texts", "contaminated_by", "tokenize",
    ]  # fmt: skip
