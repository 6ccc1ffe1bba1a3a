"""MultiPL-E-format problems in C++ and JavaScript on a tiny original fixture: the tests travel inside the
program, right completions pass, wrong ones fail, and a build error fails in the compile phase."""

import json
import shutil
from pathlib import Path

import pytest

from codefoundry.sandbox import Status
from codefoundry.tasks import Problem, evaluate_many, multipl_e

DATA = Path(__file__).parent / "data"

# Completions for the three fixture problems (add, reverse_string, count_vowels), as a model would write
# them after the prompt: C++ stops before the closing brace (stop token "\n}", the tests supply it),
# JavaScript writes the function to its end.
CPP = {
    "right": [
        "    return x + y;",
        "    return std::string(s.rbegin(), s.rend());",
        '    long n = 0;\n    for (char c : s) n += std::string("aeiouAEIOU").find(c) != std::string::npos;\n'
        "    return n;",
    ],
    "wrong": [
        "    return x - y;",
        "    return s;",
        '    long n = 0;\n    for (char c : s) n += std::string("aeiou").find(c) != std::string::npos;\n'
        "    return n;",  # misses capitals
    ],
    "broken": ["    return x + ;", "    return s.reversed();", "    long n = 0\n    return n;"],
}
JS = {
    "right": [
        "  return x + y;\n}\n",
        "  return s.split('').reverse().join('');\n}\n",
        "  return (s.match(/[aeiou]/gi) || []).length;\n}\n",
    ],
    "wrong": [
        "  return x * y;\n}\n",
        "  return s.split('').sort().join('');\n}\n",
        "  return (s.match(/[aeiou]/g) || []).length;\n}\n",  # misses capitals
    ],
    "broken": ["  return x +;\n}\n", "  return s.split('').reverse(.join('');\n}\n", "  return (;\n}\n"],
}
CASES = [("cpp", "cpp", CPP), ("js", "javascript", JS)]


def _requires(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, sandbox_name, completions = request.param
    _requires("g++" if name == "cpp" else "node")
    problems = multipl_e.load(DATA / f"multipl_e_tiny_{name}.jsonl", name)
    return name, sandbox_name, problems, completions


def test_problems_carry_their_tests_and_stop_tokens(case):
    name, sandbox_name, problems, _ = case
    assert [p.task_id for p in problems] == ["Tiny_0_add", "Tiny_1_reverse_string", "Tiny_2_count_vowels"]
    assert [p.entry_point for p in problems] == ["add", "reverse_string", "count_vowels"]
    for p in problems:
        assert isinstance(p, Problem) and p.language == sandbox_name and p.tests == ()
        assert p.metadata["multipl_e_language"] == name and p.metadata["stop_tokens"]
        program = p.program("<completion>")
        assert program.startswith(p.prompt + "<completion>\n") and program.endswith(p.metadata["suffix"])
        assert "candidate" in p.metadata["suffix"]


def test_right_pass_wrong_fail_broken_fail_to_build(case):
    name, _, problems, completions = case
    kinds = ["right", "wrong", "broken"]
    pairs = [(p, completions[kind][i]) for kind in kinds for i, p in enumerate(problems)]
    scores = evaluate_many(pairs, workers=2, progress=False)
    assert not any(s.infrastructure_error for s in scores)
    verdicts = {kind: [s.passed for s in scores[3 * k : 3 * k + 3]] for k, kind in enumerate(kinds)}
    assert verdicts == {"right": [True] * 3, "wrong": [False] * 3, "broken": [False] * 3}
    for s in scores[3:6]:  # wrong answers: the program ran and its asserts failed
        assert s.result.phase == "run" and s.result.status in (Status.FAILED, Status.KILLED)
    expected_phase = "compile" if name == "cpp" else "run"  # node has no separate build step
    assert all(s.result.phase == expected_phase for s in scores[6:])


def test_truncate_at_stop_tokens():
    stops = ["\nfunction ", "\n/*", "\n//", "\nconsole.log"]
    text = "  return x + y;\n}\n\nfunction extra() {}\n// more"
    assert multipl_e.truncate(text, stops) == "  return x + y;\n}\n"
    assert multipl_e.truncate("  return 1;\n}", ["\n}"]) == "  return 1;"
    assert multipl_e.truncate("no stop here", stops) == "no stop here"


def test_language_names_and_mismatches(tmp_path):
    with pytest.raises(ValueError, match="unsupported MultiPL-E language 'rs'"):
        multipl_e.load(DATA / "multipl_e_tiny_cpp.jsonl", "rs")
    with pytest.raises(ValueError, match=r"line 1 \(Tiny_0_add\): record is in 'cpp', not 'js'"):
        multipl_e.load(DATA / "multipl_e_tiny_cpp.jsonl", "js")
    record = json.loads((DATA / "multipl_e_tiny_js.jsonl").read_text().splitlines()[0])
    del record["tests"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="record lacks tests"):
        multipl_e.load(bad, "javascript")  # the sandbox's own name is accepted too
