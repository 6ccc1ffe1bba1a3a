"""EvalPlus-format loading on a tiny original fixture: expected outputs come from sandboxed reference runs,
survive the trip exactly (tuples, nan, inf, big ints), are cached by content, and "+" is stricter than base."""

import json
import math
import shutil
from pathlib import Path

import pytest

from codefoundry.tasks import evalplus, evaluate, evaluate_many
from codefoundry.tasks.evalplus import evalplus_decode, evalplus_encode, evalplus_match

FIXTURE = Path(__file__).parent / "data" / "evalplus_tiny.jsonl"
# Tiny/0 triangle_area: float outputs, atol 0 (so 1e-6); invalid triangles only among the plus inputs.
# Tiny/1 min_max: tuple outputs, a 10**20 input; all-negative lists only among the plus inputs.
# Tiny/2 safe_ratio: float outputs with nan and inf, atol 1e-3; a negative numerator only among plus inputs.

# Each passes every base input and fails some plus input.
BASE_ONLY = {
    "Tiny/0": "    s = (a + b + c) / 2\n    return math.sqrt(s * (s - a) * (s - b) * (s - c))\n",
    "Tiny/1": "    return (min(xs), max(xs + [0]))\n",
    "Tiny/2": "    return float('nan') if b == 0 else abs(a) / b\n",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The fixture copied to a scratch folder, so that the default cache lands there."""
    folder = tmp_path_factory.mktemp("evalplus")
    path = folder / FIXTURE.name
    shutil.copy(FIXTURE, path)
    return path


@pytest.fixture(scope="module")
def plus(data):
    return evalplus.load(data)


@pytest.fixture(scope="module")
def base(data, plus):  # after `plus`, so that it reads the cache
    return evalplus.load(data, split="base")


def _by_id(problems):
    return {p.task_id: p for p in problems}


def test_encoding_round_trips_exactly():
    values = [
        None, True, 0, -(10**30), "x\u00e9\n", 1.5, -0.0, math.inf, -math.inf, (1, (2.5, "a")), [(), []],
        {1, 2}, frozenset({"a"}), {(1, 2): [None], "k": {3}}, b"\x00\xff", 3 - 0.5j, [True, 1, 1.0],
    ]  # fmt: skip
    for value in values:
        back = evalplus_decode(json.loads(json.dumps(evalplus_encode(value))))
        assert back == value and repr(back) == repr(value)  # repr: types kept (True vs 1, tuple vs list)
    nan = evalplus_decode(json.loads(json.dumps(evalplus_encode(float("nan")))))
    assert math.isnan(nan)
    assert math.copysign(1.0, evalplus_decode(evalplus_encode(-0.0))) == -1.0
    with pytest.raises(TypeError, match="cannot encode"):
        evalplus_encode(object())


def test_comparison_rule():
    assert evalplus_match((1, 3), (1, 3), 0) and not evalplus_match([1, 3], (1, 3), 0)  # exact for non-floats
    assert evalplus_match(0.1 + 0.2, 0.3, 0) and not evalplus_match(0.3001, 0.3, 0)  # 1e-6 when atol is 0
    assert evalplus_match(0.3001, 0.3, 1e-3) and not evalplus_match(0.302, 0.3, 1e-3)
    assert evalplus_match(float("nan"), float("nan"), 0) and not evalplus_match(1.0, float("nan"), 0)
    assert evalplus_match(math.inf, math.inf, 0) and not evalplus_match(1e308, math.inf, 1e-3)
    assert evalplus_match([1.0, 2.0000001], (1.0, 2.0), 0)  # sequences of floats: element by element
    assert not evalplus_match([1.0], (1.0, 2.0), 0) and not evalplus_match("0.3", 0.3, 1e-3)
    assert evalplus_match(2, 2.0, 0) and not evalplus_match(True, 1.5, 1.0)


def test_expected_outputs_come_from_the_reference_and_are_cached(data, plus):
    assert [p.task_id for p in plus] == ["Tiny/0", "Tiny/1", "Tiny/2"]
    assert [(p.metadata["n_base"], p.metadata["n_plus"], len(p.tests)) for p in plus] == [
        (3, 4, 7), (3, 3, 6), (3, 4, 7),
    ]  # fmt: skip
    cache = json.loads((data.parent / "evalplus_tiny.expected.json").read_text())
    outputs = list(cache["outputs"].values())
    assert {"tuple": [-100000000000000000000, 100000000000000000000]} in outputs[1]["plus"]
    assert outputs[2]["base"][2] == {"float": "nan"} and outputs[2]["plus"][3] == {"float": "inf"}
    assert outputs[0]["plus"][:2] == [{"float": "-1.0"}, {"float": "-1.0"}]
    assert _by_id(plus)["Tiny/1"].metadata["contract"].strip().startswith("assert len(xs) > 0")


def test_canonical_solutions_pass_base_and_plus(base, plus):
    pairs = [(p, p.canonical_solution) for p in base + plus]
    scores = evaluate_many(pairs, workers=2, progress=False)
    assert [(p.task_id, p.metadata["split"], s.passed) for (p, _), s in zip(pairs, scores, strict=True)] == [
        (t, split, True) for split in ("base", "plus") for t in ("Tiny/0", "Tiny/1", "Tiny/2")
    ]


def test_plus_is_stricter_than_base(base, plus):
    pairs = [(p, BASE_ONLY[p.task_id]) for p in base + plus]
    scores = evaluate_many(pairs, workers=2, progress=False)
    on_base, on_plus = scores[:3], scores[3:]
    assert all(s.passed for s in on_base)
    assert not any(s.passed for s in on_plus)
    assert all(3 / 7 <= s.fraction < 1 for s in on_plus)  # every base input still passes
    assert "expected -1.0" in on_plus[0].result.tests[3].error


def test_tolerance_follows_atol(plus):
    p = _by_id(plus)
    samples = [
        (p["Tiny/2"], "    return float('nan') if b == 0 else a / b + 5e-4\n", True),  # within atol 1e-3
        (p["Tiny/2"], "    return float('nan') if b == 0 else a / b + 5e-3\n", False),
        (p["Tiny/2"], "    return 0.0 if b == 0 else a / b\n", False),  # nan must stay nan
        (p["Tiny/0"], "    return -1.0 if a + b <= c or a + c <= b or b + c <= a else "
                      "round(math.sqrt((a+b+c)*(-a+b+c)*(a-b+c)*(a+b-c)) / 4, 5)\n", False),  # 1e-6
        (p["Tiny/1"], "    return [min(xs), max(xs)]\n", False),  # a list is not the tuple asked for
    ]  # fmt: skip
    scores = evaluate_many([(q, c) for q, c, _ in samples], workers=2, progress=False)
    assert [s.passed for s in scores] == [want for _, _, want in samples]


def test_cache_is_read_and_keyed_by_content(data, plus, tmp_path):
    """On a private copy of the data and its cache, so that the other tests keep the true outputs."""
    shutil.copy(data, tmp_path / data.name)
    shutil.copy(data.parent / "evalplus_tiny.expected.json", tmp_path / "evalplus_tiny.expected.json")
    data, cache_path = tmp_path / data.name, tmp_path / "evalplus_tiny.expected.json"
    cache = json.loads(cache_path.read_text())
    records = [json.loads(line) for line in data.read_text().splitlines()]
    key = evalplus._key(records[1])
    cache["outputs"][key]["base"][0] = {"tuple": [99, 99]}  # a tampered entry is believed...
    cache_path.write_text(json.dumps(cache))
    tampered = evalplus.load(data, split="base")
    assert '{"tuple": [99, 99]}' in tampered[1].setup
    assert not evaluate(tampered[1], tampered[1].canonical_solution).passed  # the verdict follows the cache
    records[1]["canonical_solution"] = "    return (min(xs), max(xs))\n"  # ...until the solution changes
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in records))
    fresh = evalplus.load(changed, cache_path=cache_path, split="base")
    assert '{"tuple": [1, 3]}' in fresh[1].setup
    assert len(json.loads(cache_path.read_text())["outputs"]) == 4  # the new entry joined the others


def test_a_failing_reference_is_one_clear_error(tmp_path):
    record = {"task_id": "Bad/0", "prompt": "def inv(x):\n", "entry_point": "inv",
              "canonical_solution": "    return 1 / x\n", "base_input": [[2], [0]], "plus_input": [], "atol": 0}  # fmt: skip
    good = {**record, "task_id": "Good/0", "canonical_solution": "    return x\n"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(
        ValueError, match=r"Bad/0: the canonical solution raised on base input 1: ZeroDivisionError"
    ):
        evalplus.load(path)
    saved = json.loads((tmp_path / "bad.expected.json").read_text())["outputs"]
    assert list(saved.values()) == [{"base": [2, 0], "plus": []}]  # the good task's work is kept
