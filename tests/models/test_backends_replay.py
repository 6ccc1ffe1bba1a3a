"""The replay backend, the shared helpers in base.py, and load_backend's spec handling."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

import codefoundry.models.backends as backends
from codefoundry.models.backends import (
    Backend,
    BackendError,
    ReplayBackend,
    SamplingParams,
    load_backend,
    truncate_at_stop,
)

GREEDY = SamplingParams()


def test_public_api() -> None:
    assert set(backends.__all__) == {
        "Backend",
        "BackendError",
        "HFBackend",
        "OpenAIBackend",
        "ReplayBackend",
        "SamplingParams",
        "load_backend",
        "truncate_at_stop",
    }
    for name in backends.__all__:
        assert getattr(backends, name) is not None


def test_truncate_at_stop_cuts_at_the_earliest_stop() -> None:
    assert truncate_at_stop("a\nb\n\nc", ["\n\n", "\n"]) == "a"
    assert truncate_at_stop("xxENDyySTOP", ["STOP", "END"]) == "xx"
    assert truncate_at_stop("no stop here", ["\nclass", "\ndef"]) == "no stop here"
    assert truncate_at_stop("abc", []) == "abc"
    # Overlapping candidates: the earliest start wins, whatever the order of the stops.
    assert truncate_at_stop("abcabc", ["bca", "cab"]) == "a"


def test_sampling_params_validate_and_normalise() -> None:
    params = SamplingParams(stop=["\n"])  # type: ignore[arg-type]
    assert params.stop == ("\n",) and hash(params)
    for bad in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"max_tokens": 0}, {"stop": ("",)}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not the string"):
        SamplingParams(stop="\n")  # type: ignore[arg-type]


def test_script_is_served_in_order_n_at_a_time() -> None:
    b = ReplayBackend(["a1", "a2", "b1", "b2", "c1"])
    assert isinstance(b, Backend)
    assert b.complete(["x", "y"], SamplingParams(n=2, temperature=1.0)) == [["a1", "a2"], ["b1", "b2"]]
    assert b.chat([[{"role": "user", "content": "anything"}]], GREEDY) == [["c1"]]
    assert b.remaining == 0


def test_script_running_out_raises_and_consumes_nothing() -> None:
    b = ReplayBackend(["a", "b", "c"])
    with pytest.raises(BackendError, match=r"ran out: 3 completions left, this call needs 4"):
        b.complete(["x", "y"], SamplingParams(n=2, temperature=1.0))
    assert b.remaining == 3
    assert b.complete(["x", "y", "z"], GREEDY) == [["a"], ["b"], ["c"]]
    with pytest.raises(BackendError, match="ran out"):  # no cycling back to the start
        b.complete(["x"], GREEDY)


def test_stop_strings_apply_to_replayed_text() -> None:
    b = ReplayBackend(["    return 1\n\ndef other():"])
    assert b.complete(["p"], SamplingParams(stop=("\ndef",))) == [["    return 1\n"]]


def test_by_prompt_lookup() -> None:
    b = ReplayBackend(by_prompt={"p1": ["a", "b", "c"], "p2": ["z"]})
    params = SamplingParams(n=2, temperature=1.0)
    assert b.complete(["p1"], params) == [["a", "b"]]
    with pytest.raises(BackendError, match=r"prompt 'p1' has 1 completions left, this call needs 2"):
        b.complete(["p1"], params)
    assert b.complete(["p2", "p1"], GREEDY) == [["z"], ["c"]]
    with pytest.raises(BackendError, match=r"no recorded completions for prompt 'p3'"):
        b.complete(["p3"], GREEDY)


def test_by_prompt_repeated_prompt_in_one_call() -> None:
    b = ReplayBackend(by_prompt={"p": ["1", "2", "3"]})
    assert b.complete(["p", "p"], GREEDY) == [["1"], ["2"]]
    with pytest.raises(BackendError):
        b.complete(["p", "p"], GREEDY)
    assert b.remaining == 1


def test_chat_looks_up_the_last_user_message() -> None:
    b = ReplayBackend(by_prompt={"fix the bug": ["done"], "and now?": ["more"]})
    conversation = [
        {"role": "system", "content": "you are terse"},
        {"role": "user", "content": "fix the bug"},
        {"role": "assistant", "content": "which bug?"},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": "(partial)"},
    ]
    assert b.chat([conversation, conversation[:2]], GREEDY) == [["more"], ["done"]]
    with pytest.raises(BackendError, match="no user message"):
        b.chat([[{"role": "system", "content": "x"}]], GREEDY)


def test_exactly_one_mode() -> None:
    with pytest.raises(ValueError):
        ReplayBackend()
    with pytest.raises(ValueError):
        ReplayBackend(["a"], by_prompt={"p": ["a"]})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_load_from_jsonl(tmp_path: Path) -> None:
    records = [
        {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "completion": "    return b + a\n"},
        {"prompt": "def neg(x):\n", "completion": "    return -x\n"},
    ]
    path = _write(
        tmp_path / "samples.jsonl", [json.dumps(r) for r in records[:2]] + ["", json.dumps(records[2])]
    )
    b = load_backend(f"replay:{path}")
    assert b.name == f"replay:{path}"
    out = b.complete(["def add(a, b):\n", "def neg(x):\n"], GREEDY)
    assert out == [["    return a + b\n"], ["    return -x\n"]]
    assert b.complete(["def add(a, b):\n"], GREEDY) == [["    return b + a\n"]]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.jsonl", ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": ']
    )
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:2: not valid JSON")):
        load_backend(f"replay:{path}")


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"task_id": "HumanEval/3", "completion": "x"}, "missing field 'prompt'"),
        ({"prompt": "p"}, "missing field 'completion'"),
        ({"prompt": "p", "completion": 3}, "field 'completion' must be a string"),
        (["p", "c"], "expected a JSON object"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, record: object, problem: str) -> None:
    path = _write(tmp_path / "r.jsonl", ["", json.dumps(record)])
    with pytest.raises(ValueError) as info:
        ReplayBackend.from_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: {problem}")
    assert "\n" not in str(info.value)


def test_unknown_prefix_names_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        load_backend("vllm:some-model")
    for prefix in ("openai:", "openai-chat:", "hf:", "replay:", "cf:"):
        assert prefix in str(info.value)
    with pytest.raises(ValueError, match="unknown model backend"):
        load_backend("no-colon-at-all")


def test_cf_uses_the_local_backend_when_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict]] = []

    class LocalBackend:
        def __init__(self, path: str, **options: object) -> None:
            made.append((path, options))

    local = types.ModuleType("codefoundry.models.backends.local")
    local.LocalBackend = LocalBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codefoundry.models.backends.local", local)
    assert isinstance(load_backend("cf:ckpt.pt", device="cpu"), LocalBackend)
    assert made == [("ckpt.pt", {"device": "cpu"})]


def test_backend_modules_import_no_optional_dependency() -> None:
    # Importing every backend module must not pull torch or transformers in (they load on use).
    import subprocess

    code = (
        "import sys, codefoundry.models.backends.hf, codefoundry.models.backends.openai, "
        "codefoundry.models.backends.replay; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
