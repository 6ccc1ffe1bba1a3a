"""Cross-file line completion: both benchmarks' record shapes, prompt layout and budget, line-level scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codefoundry.tasks.repo_completion import (
    RepoCompletionProblem,
    Snippet,
    build_prompt,
    first_line,
    load,
    score,
)

DATA = Path(__file__).parent / "data"
CCE = DATA / "crosscodeeval_tiny.jsonl"
REPOBENCH = DATA / "repobench_tiny.jsonl"


def test_load_crosscodeeval_fields():
    problems = load(CCE)
    assert [p.task_id for p in problems] == ["tinyshop/0", "geometry/1", "noctx/2"]
    shop = problems[0]
    assert shop.source == "crosscodeeval"
    assert shop.left_context.endswith("    total = ")
    assert shop.groundtruth == "apply_discount(subtotal, code)"
    assert shop.right_context == "\n    return round(total, 2)\n"
    assert (shop.repository, shop.file_path) == ("example/tinyshop", "shop/checkout.py")
    assert [(s.path, s.score) for s in shop.crossfile] == [("shop/cart.py", 0.41), ("shop/pricing.py", 0.87)]
    assert shop.crossfile_text.startswith("# Here are some relevant code fragments")
    assert shop.metadata["groundtruth_start_lineno"] == 7
    assert problems[2].crossfile == () and problems[2].right_context == ""


def test_load_repobench_fields():
    problems = load(REPOBENCH)
    assert [p.task_id for p in problems] == ["repobench_tiny.jsonl:1", "repobench_tiny.jsonl:2"]
    weather = problems[0]
    assert weather.source == "repobench"
    assert weather.import_statement.startswith("from weather.models import Reading")
    assert weather.left_context.startswith("\n\ndef describe")
    assert weather.groundtruth == '    return f"{reading.celsius} C / {f:.1f} F"'
    assert (weather.repository, weather.file_path) == ("example/weather", "weather/report.py")
    assert [(s.identifier, s.path) for s in weather.crossfile] == [("Reading", "weather/models.py"),
                                                                   ("to_fahrenheit", "weather/units.py")]  # fmt: skip
    assert weather.metadata["gold_snippet_index"] == 1 and weather.metadata["level"] == "2k"
    assert "next_line" not in weather.metadata and "cropped_code" not in weather.metadata


def test_prompt_puts_crossfile_comments_first_and_ends_at_the_cursor():
    shop = load(CCE)[0]
    prompt = build_prompt(shop, max_chars=10_000)
    assert prompt.endswith(shop.left_context)
    cross = prompt[: -len(shop.left_context)]
    # scored snippets: the best (pricing, 0.87) sits nearest the cursor
    assert cross.index("# Path: shop/cart.py") < cross.index("# Path: shop/pricing.py")
    assert "#         return sum(i.price for i in self.items)\n#\n# Path: shop/pricing.py" not in cross
    assert "#         return sum(i.price for i in self.items)\n# Path: shop/pricing.py" in cross
    assert all(line.startswith("#") for line in cross.splitlines())


def test_java_snippets_use_slash_comments():
    geometry = load(CCE)[1]
    prompt = build_prompt(geometry, max_chars=10_000)
    assert prompt.startswith(
        "// Path: src/demo/model/Point.java\n// public record Point(double x, double y) {}\n"
    )


def test_rendered_text_is_used_when_no_snippet_list():
    problem = RepoCompletionProblem("t", "x = ", "1", crossfile_text="# from a.py\n# y = 2")
    assert build_prompt(problem, max_chars=100) == "# from a.py\n# y = 2\nx = "


@pytest.mark.parametrize("max_chars", [1, 7, 40, 90, 150, 230, 400, 1000])
@pytest.mark.parametrize("crossfile_first", [True, False])
def test_budget_is_respected_and_the_cursor_kept(max_chars, crossfile_first):
    for problem in load(CCE) + load(REPOBENCH):
        prompt = build_prompt(problem, max_chars=max_chars, crossfile_first=crossfile_first)
        assert len(prompt) <= max_chars
        cursor_line = problem.left_context.rsplit("\n", 1)[-1]  # in-file text gets at least half
        kept = min(len(cursor_line), (max_chars + 1) // 2)
        assert prompt.endswith(cursor_line[len(cursor_line) - kept :])


def test_truncation_drops_the_far_end_first():
    weather = load(REPOBENCH)[0]
    full = build_prompt(weather, max_chars=10_000)
    assert full.startswith("# Path: weather/models.py")
    units = full[full.index("# Path: weather/units.py") :]
    cut = build_prompt(weather, max_chars=len(full) - 20)
    assert cut.startswith("# Path: weather/models.py\n#         self.celsius")  # header kept, first lines cut
    assert cut.endswith(units)
    dropped = build_prompt(weather, max_chars=len(full) - 115)
    assert "weather/models.py" not in dropped  # the far snippet went first, whole
    assert dropped.startswith("# Path: weather/units.py\n")
    assert dropped.endswith("from weather.units import to_fahrenheit\n" + weather.left_context)
    assert len(dropped) <= len(full) - 115


def test_in_file_context_is_cut_at_a_line_start():
    lines = "".join(f"line_{i} = {i}\n" for i in range(100))
    problem = RepoCompletionProblem("t", lines + "result = ", "line_1")
    prompt = build_prompt(problem, max_chars=60)
    assert prompt.endswith("result = ") and len(prompt) <= 60
    assert prompt.startswith("line_")  # whole lines only


def test_crossfile_first_false_puts_imports_before_snippets():
    weather = load(REPOBENCH)[0]
    prompt = build_prompt(weather, max_chars=10_000, crossfile_first=False)
    assert prompt.startswith(weather.import_statement + "\n# Path: weather/models.py")
    assert prompt.endswith("# " + "    return celsius * 9 / 5 + 32\n" + weather.left_context)


def test_crossfile_share():
    shop = load(CCE)[0]
    none = build_prompt(shop, max_chars=len(shop.left_context), crossfile_chars=0)
    assert none == shop.left_context
    assert build_prompt(shop, max_chars=10, crossfile_chars=0) == shop.left_context[-10:]
    with pytest.raises(ValueError, match="max_chars"):
        build_prompt(shop, max_chars=0)


def test_score_first_non_empty_line():
    problems = load(CCE) + load(REPOBENCH)
    predictions = {
        "tinyshop/0": "\n  apply_discount(subtotal, code)  \n    return total",  # blank first line, spaces
        "geometry/1": "return Math.sqrt(a.x() * b.x());",
        "noctx/2": "os.path.dirname(__file__)",
        "repobench_tiny.jsonl:1": 'return f"{reading.celsius} C / {f:.1f} F"\n',  # no indentation: still a match
        "repobench_tiny.jsonl:2": "",
    }
    result = score(predictions, problems)
    per = result["per_task"]
    assert [per[p.task_id]["exact_match"] for p in problems] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert per["tinyshop/0"]["edit_similarity"] == 1.0
    assert 0.3 < per["geometry/1"]["edit_similarity"] < 1.0
    assert per["repobench_tiny.jsonl:2"]["edit_similarity"] == 0.0
    assert result["n"] == 5 and result["exact_match"] == pytest.approx(3 / 5)
    mean = sum(t["edit_similarity"] for t in per.values()) / 5
    assert result["edit_similarity"] == pytest.approx(mean)
    assert score([predictions[p.task_id] for p in problems], problems) == result


def test_score_refuses_mismatched_predictions():
    problems = load(CCE)
    with pytest.raises(ValueError, match="1 problems lack a prediction"):
        score({"tinyshop/0": "x", "geometry/1": "y"}, problems)
    with pytest.raises(ValueError, match="1 predictions name no problem"):
        score({"tinyshop/0": "x", "geometry/1": "y", "noctx/2": "z", "other": "w"}, problems)
    with pytest.raises(ValueError, match="not a list of that length"):
        score(["x"], problems)


def test_first_line():
    assert first_line("\n \n  foo()  \nbar") == "foo()"
    assert first_line("   \n") == ""


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("groundtruth"), r"bad\.jsonl:2: has neither 'groundtruth'"),
        (lambda r: r.update(prompt=3), r"bad\.jsonl:2: 'prompt' must be a string, got int"),
        (lambda r: r.update(crossfile_context=[]), r"bad\.jsonl:2: 'crossfile_context' must be an object"),
        (lambda r: r["crossfile_context"]["list"].append({"filename": "x.py"}),
         r"bad\.jsonl:2: crossfile_context\.list\[1\] lacks a string 'retrieved_chunk'"),
        (lambda r: r["metadata"].update(task_id="tinyshop/0"), r"bad\.jsonl:2: task_id 'tinyshop/0' repeats line 1"),
    ],
)  # fmt: skip
def test_crosscodeeval_errors_name_file_and_line(tmp_path, mutate, message):
    records = _lines(CCE)
    mutate(records[1])
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=message):
        load(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("cropped_code"), r"bad\.jsonl:1: lacks 'code'"),
        (lambda r: r.update(context={"a": 1}), r"bad\.jsonl:1: 'context' must be a list of snippets or a string"),
        (lambda r: r["context"].append({"path": "x.py"}), r"bad\.jsonl:1: context\[2\] lacks a string 'snippet'"),
    ],
)  # fmt: skip
def test_repobench_errors_name_file_and_line(tmp_path, mutate, message):
    records = _lines(REPOBENCH)
    mutate(records[0])
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=message):
        load(path)


def test_invalid_json_and_non_objects(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(CCE.read_text() + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:5: expected a JSON object, got list"):
        load(path)
    path.write_text('{"groundtruth": "x",\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not valid JSON"):
        load(path)


def test_repobench_v1_string_context(tmp_path):
    record = {"repo_name": "r", "file_path": "a.py", "context": "# Path: b.py\n# X = 1\n",
              "import_statement": "", "code": "y = ", "next_line": "y = X"}  # fmt: skip
    path = tmp_path / "v1.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (problem,) = load(path)
    assert problem.crossfile == () and problem.left_context == "y = "
    assert build_prompt(problem, max_chars=100) == "# Path: b.py\n# X = 1\ny = "


def test_snippet_without_path_has_no_header():
    problem = RepoCompletionProblem("t", "z = ", "1", crossfile=(Snippet("", "a = 1"),))
    assert build_prompt(problem, max_chars=100) == "# a = 1\nz = "
