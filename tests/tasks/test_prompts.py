"""Prompt formatting and code extraction: realistic chat answers, each with the code it must yield, and
completions built from answers around HumanEval's canonical solutions graded for real."""

from __future__ import annotations

import ast

import pytest

from codefoundry.tasks import Problem, evaluate_many, humaneval
from codefoundry.tasks.prompts import (
    STOP_SEQUENCES,
    base_prompt,
    chat_messages,
    completion_from_chat,
    extract_code,
    truncate_completion,
)

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
ADD = Problem("toy/add", PROMPT, "add", ("assert candidate(2, 3) == 5\nassert candidate(-1, 1) == 0",),
              setup=PROMPT)  # fmt: skip

# (answer, expected extraction with entry_point="add")
ANSWERS = [
    pytest.param(
        "Sure! Here is the completed function:\n\n```python\ndef add(a: int, b: int) -> int:\n"
        "    return a + b\n```\n\nIt simply returns the sum of both arguments.",
        "def add(a: int, b: int) -> int:\n    return a + b",
        id="prose-around-fence",
    ),
    pytest.param(
        "```py\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a + b",
        id="py-tag",
    ),
    pytest.param(
        "Here you go:\r\n\r\n```python\r\ndef add(a, b):\r\n    return a + b\r\n```\r\nHope it helps!\r\n",
        "def add(a, b):\n    return a + b",
        id="crlf",
    ),
    pytest.param(
        "Here is the implementation:\n\n```python\ndef add(a, b):\n    total = a + b\n    return total\n",
        "def add(a, b):\n    total = a + b\n    return total",
        id="unterminated-final-fence",
    ),
    pytest.param(
        "Install nothing:\n\n```bash\npip install nothing\n```\n\nThen:\n\n```python\ndef add(a, b):\n"
        "    return a + b\n```\n\nExample:\n\n```python\nprint(add(1, 2))  # 3\n```",
        "def add(a, b):\n    return a + b",
        id="several-fences-pick-the-definition",
    ),
    pytest.param(
        "A first attempt:\n```python\ndef add(a, b):\n    return a - b\n```\nOops, that subtracts. "
        "Corrected:\n```python\ndef add(a, b):\n    return a + b\n```\n",
        "def add(a, b):\n    return a + b",
        id="defined-twice-in-two-blocks-last-wins",
    ),
    pytest.param(
        "```python\ndef add(a, b):\n    return a - b\n\n\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a - b\n\n\ndef add(a, b):\n    return a + b",
        id="defined-twice-in-one-block-kept-whole",
    ),
    pytest.param(
        "```\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a + b",
        id="untagged-fence",
    ),
    pytest.param(
        "```text\nadd(1, 2) -> 3\n```\n\n```\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a + b",
        id="other-tag-loses-to-definition",
    ),
    pytest.param(
        "1. Write the function:\n\n   ```python\n   def add(a, b):\n       return a + b\n   ```\n",
        "def add(a, b):\n    return a + b",
        id="indented-fence-in-a-list",
    ),
    pytest.param(
        "```python\ndef add(a, b):\n    return a + b```",
        "def add(a, b):\n    return a + b",
        id="closing-fence-glued-to-code",
    ),
    pytest.param(
        "~~~python\ndef add(a, b):\n    return a + b\n~~~",
        "def add(a, b):\n    return a + b",
        id="tilde-fence",
    ),
    pytest.param(
        "````python\ndef add(a, b):\n    s = '```'\n    return a + b\n````",
        "def add(a, b):\n    s = '```'\n    return a + b",
        id="four-backtick-fence-holds-three",
    ),
    pytest.param(
        "First a helper:\n```python\ndef _plus(x, y):\n    return x + y\n```\nThen the function:\n"
        "```python\ndef add(a, b):\n    return _plus(a, b)\n```\nUsage:\n```python\nassert add(1, 1) == 2\n```",
        "def _plus(x, y):\n    return x + y\n\n\ndef add(a, b):\n    return _plus(a, b)",
        id="helper-in-an-earlier-block-prepended",
    ),
    pytest.param(
        "Here is the code:\n\nimport operator\n\ndef add(a, b):\n    return operator.add(a, b)\n\n"
        "This uses the operator module for clarity.",
        "import operator\n\ndef add(a, b):\n    return operator.add(a, b)",
        id="no-fence-prose-both-sides",
    ),
    pytest.param(
        "The solution is below.\n\n    def add(a, b):\n        return a + b\n\nThat is all.",
        "def add(a, b):\n    return a + b",
        id="markdown-indented-code-block",
    ),
    pytest.param(
        "def add(a, b):\n    return a + b\n\nExample usage:\nprint(add(2, 3))",
        "def add(a, b):\n    return a + b",
        id="no-fence-trailing-example-heading",
    ),
    pytest.param(
        "from functools import reduce\nimport operator\n\n@staticmethod\ndef add(a, b):\n    return a + b",
        "from functools import reduce\nimport operator\n\n@staticmethod\ndef add(a, b):\n    return a + b",
        id="no-fence-code-only",
    ),
    pytest.param(
        "    return a + b",
        "    return a + b",
        id="bare-indented-body",
    ),
    pytest.param(
        "return a + b",
        "return a + b",
        id="bare-unindented-body",
    ),
    pytest.param("I'm sorry, but I can't help with that request.", "", id="refusal"),
    pytest.param("", "", id="empty"),
    pytest.param("The answer is to return a plus b.", "", id="prose-only"),
    pytest.param("```python\n\n```", "", id="empty-fence"),
]


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
def test_extract_code(answer, expected):
    assert extract_code(answer, entry_point="add", prompt=PROMPT) == expected


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
def test_completion_from_chat_grades_like_the_extracted_code(answer, expected):
    completion = completion_from_chat(answer, ADD)
    if not expected:
        assert completion == ""
        return
    program = ADD.prompt + completion
    tree = ast.parse(program)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "add" for n in tree.body)
    compile(program, "<test>", "exec")


def test_completion_from_chat_verdicts():
    good = ["```python\ndef add(a, b):\n    return a + b\n```", "    return a + b", "return a + b",
            "Sure:\n```python\n" + PROMPT + "    return a + b\n```"]  # fmt: skip
    bad = ["```python\ndef add(a, b):\n    return a - b\n```", "Sorry, I cannot."]
    scores = evaluate_many(
        [(ADD, completion_from_chat(a, ADD)) for a in good + bad], workers=2, progress=False
    )
    assert [s.passed for s in scores] == [True] * len(good) + [False] * len(bad)


def test_echoed_prompt_becomes_a_true_completion():
    answer = "```python\n" + PROMPT + "    return a + b\n```"
    assert completion_from_chat(answer, ADD) == "\n    return a + b\n"


def test_prompt_ending_in_a_bare_signature_is_closed():
    problem = Problem("toy/neg", "def neg(x):\n", "neg", ("assert candidate(2) == -2",))
    echoed = completion_from_chat("```python\ndef neg(x):\n    return -x\n```", problem)
    assert echoed == "\n    return -x\n"
    completion = completion_from_chat("```python\ndef neg(value):\n    return -value\n```", problem)
    assert completion.startswith("    pass\n")
    scores = evaluate_many([(problem, echoed), (problem, completion)], workers=1, progress=False)
    assert [s.passed for s in scores] == [True, True]


def test_cpp_fences_and_heuristics():
    answer = ("Here's the code:\n```bash\ng++ main.cpp\n```\n```cpp\n#include <vector>\n"
              "int add(int a, int b) {\n    return a + b;\n}\n```")  # fmt: skip
    assert extract_code(answer, language="cpp", entry_point="add") == (
        "#include <vector>\nint add(int a, int b) {\n    return a + b;\n}"
    )
    assert extract_code(answer, language="c++", entry_point="add").startswith("#include")
    unfenced = "Use this:\n#include <cstdio>\nint add(int a, int b) {\n  return a + b;\n}\nIt adds numbers."
    assert (
        extract_code(unfenced, language="cpp")
        == "#include <cstdio>\nint add(int a, int b) {\n  return a + b;\n}"
    )
    assert extract_code("No code here, sorry.", language="cpp") == ""


def test_without_entry_point_the_first_code_block_wins():
    answer = "```python\ndef f():\n    return 1\n```\nand a test:\n```python\ndef test_f():\n    assert f() == 1\n```"
    assert extract_code(answer) == "def f():\n    return 1"


def test_base_prompt_and_chat_messages():
    assert base_prompt(ADD) == PROMPT
    messages = chat_messages(ADD)
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert "```python\n" + PROMPT.rstrip() + "\n```" in content
    assert "`add`" in content and "single ```python code block" in content
    messages = chat_messages(ADD, system="You write Python.", instruction="Finish this.")
    assert messages[0] == {"role": "system", "content": "You write Python."}
    assert messages[1]["content"].startswith("Finish this.\n\n```python\n")


def test_stop_sequences_and_truncation():
    stops = STOP_SEQUENCES["humaneval"]
    assert set(stops) == {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert"}
    text = "    return a + b\n\n\ndef other():\n    pass\nprint(1)"
    assert truncate_completion(text, stops) == "    return a + b\n\n"
    assert truncate_completion("    x = 1\n# done\nprint(x)", stops) == "    x = 1"
    assert truncate_completion("    return 1", stops) == "    return 1"
    assert truncate_completion("a\nb", "\n") == "a"
    assert truncate_completion("abc", ["", "c"]) == "ab"
    with pytest.raises(TypeError):
        STOP_SEQUENCES["new"] = ("x",)  # type: ignore[index]


@pytest.fixture(scope="module")
def problems():
    return humaneval.load()


def _entry_function_source(p: Problem) -> str:
    """The entry-point function alone (signature, docstring, canonical body) with the prompt's imports."""
    program = p.prompt + p.canonical_solution
    tree = ast.parse(program)
    parts = [
        ast.get_source_segment(program, n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    parts += [ast.get_source_segment(program, n) for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == p.entry_point]  # fmt: skip
    return "\n\n".join(parts)


def test_humaneval_chat_answers_around_canonical_solutions_pass(problems):
    """Three answer shapes per problem (the entry function in prose and fences, the whole program echoed
    with CRLF endings, the body alone in a fence): every completion passes the real tests."""
    pairs = []
    for p in problems:
        function = _entry_function_source(p)
        answers = [
            f"Certainly! Here's an implementation:\n\n```python\n{function}\n```\n\nIt runs in linear time.",
            ("```python\n" + p.prompt + p.canonical_solution + "```\n").replace("\n", "\r\n"),
            f"```python\n{p.canonical_solution}```",
        ]
        pairs += [(p, completion_from_chat(a, p)) for a in answers]
    scores = evaluate_many(pairs, workers=2, progress=False)
    failed = [(p.task_id, c) for (p, c), s in zip(pairs, scores, strict=True) if not s.passed]
    assert failed == []
