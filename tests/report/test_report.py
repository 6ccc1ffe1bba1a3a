"""The run report: schema errors name the bad field, result strings stay text, re-renders are
byte-identical, Markdown links resolve, and every number shown is one planted in the results."""

import base64
import copy
import json
import math
import re
from html.parser import HTMLParser

import pytest

from codefoundry.report import ResultsError, render_report, validate_results
from codefoundry.report.__main__ import main
from codefoundry.report.schema import fmt_number

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_results() -> dict:
    """A small run with planted values: 3 curves (one with a missing point and a NaN), 1 table, 2 stages."""
    return {
        "title": "tiny run",
        "command": "codefoundry quickstart --out runs/q --minutes 1",
        "config": {"model": {"depth": 2}, "lr": 0.0003},
        "seed": 1234,
        "versions": {"python": "3.11.9", "codefoundry": "0.1.0"},
        "stages": [
            {"name": "data", "wall_s": 12.5, "summary": {"documents": 321, "source": "stdlib"}},
            {"name": "pretrain", "wall_s": 100.25, "summary": {"final_loss": 2.718281828}},
        ],
        "curves": [
            {
                "title": "pretraining loss",
                "x_label": "step",
                "y_label": "loss",
                "series": [
                    {"name": "train", "x": [0, 1, 2, 3], "y": [5.0, 4.0, None, 3.0]},
                    {"name": "val", "x": [0, 3], "y": [5.5, float("nan")]},
                ],
            },
            {
                "title": "RL reward",
                "x_label": "step",
                "y_label": "mean reward",
                "series": [{"name": "grpo", "x": [0, 1, 2], "y": [0.1, 0.2, 0.3]}],
            },
            {
                "title": "pass@1",
                "x_label": "step",
                "y_label": "pass@1",
                "series": [{"name": "held-out", "x": [0, 10], "y": [0.25, 0.5]}],
            },
        ],  # fmt: skip
        "tables": [
            {
                "title": "pass@k per benchmark",
                "columns": ["benchmark", "pass@1", "pass@5"],
                "rows": [["parametric", 0.123456, 0.5], ["humaneval", None, float("nan")]],
            },
        ],  # fmt: skip
        "headline": [
            {"metric": "parametric pass@1 after RL", "value": 0.4321, "ci": [0.39, 0.47], "note": "n=200"},
            {"metric": "humaneval pass@1", "value": None, "ci": None, "note": "skipped"},
        ],
    }


class _Tags(HTMLParser):
    """Collects start tags with their attributes, and the text of every table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def _parse(html_text: str) -> _Tags:
    parser = _Tags()
    parser.feed(html_text)
    return parser


def _set(results: dict, path: tuple, value) -> dict:
    bad = copy.deepcopy(results)
    node = bad
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return bad


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("curves", 2, "series", 0, "x"), "0, 10", "results.curves[2].series[0].x: expected a list of numbers"),
        (("curves", 0, "series", 0, "y", 1), "4.0", "results.curves[0].series[0].y: expected a list of numbers (item 1 is str)"),
        (("curves", 1, "series", 0, "x"), [0, 1], "results.curves[1].series[0]: x has 2 values but y has 3"),
        (("title",), KeyError, "results: missing key 'title'"),
        (("seed",), True, "results.seed: expected an integer, got bool"),
        (("tables", 0, "rows", 1), ["humaneval", None], "results.tables[0].rows[1]: expected 3 cells (one per column), got 2"),
        (("tables", 0, "rows", 0, 1), {"v": 1}, "results.tables[0].rows[0][1]: expected a string, number or null, got dict"),
        (("headline", 0, "ci"), [0.39], "results.headline[0].ci: expected [lo, hi] or null"),
        (("stages", 1, "summary", "final_loss"), [2.7], "results.stages[1].summary.final_loss: expected a string, number or null, got list"),
        (("stages", 0, "wall_s"), "12s", "results.stages[0].wall_s: expected a number or null, got str"),
        (("curves",), {}, "results.curves: expected a list, got dict"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_bad_field_in_one_line(tmp_path, path, value, message):
    bad = _set(make_results(), path, value)
    with pytest.raises(ResultsError) as info:
        validate_results(bad)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text
    # render_report validates before it writes anything.
    with pytest.raises(ResultsError):
        render_report(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_valid_results_pass_including_numpy_scalars_and_extra_keys():
    np = pytest.importorskip("numpy")
    results = make_results()
    results["seed"] = np.int64(7)
    results["tables"][0]["rows"][0][1] = np.float32(0.25)
    results["extra_field_for_later"] = {"anything": 1}
    validate_results(results)


def test_result_strings_stay_text_in_html_and_markdown(tmp_path):
    attack = "<script>alert(1)</script>"
    results = make_results()
    results["title"] = attack
    results["command"] = f"echo '{attack}' && echo ```"
    results["curves"][0]["title"] = f'"><img src=x onerror=alert(1)> {attack} $x$'
    results["curves"][0]["series"][0]["name"] = attack
    results["tables"][0]["columns"][0] = f"a|b {attack}"
    results["tables"][0]["rows"][0][0] = f"[link](http://evil.example) {attack} *bold*"
    results["headline"][0]["note"] = '<img src="http://evil.example/x.png">'
    results["config"]["payload"] = attack
    html_path, md_path = render_report(results, tmp_path)
    html_text, md_text = html_path.read_text(), md_path.read_text()

    parsed = _parse(html_text)
    assert [t for t, _ in parsed.tags].count("script") == 1  # only the report's own counting script
    # Every image is an embedded plot; no attribute anywhere points outside the file.
    imgs = [a for t, a in parsed.tags if t == "img"]
    assert len(imgs) == 3 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    for _, attrs in parsed.tags:
        for name in ("src", "href", "action", "onerror"):
            assert name not in attrs or attrs[name].startswith("data:"), attrs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert 'http-equiv="Content-Security-Policy"' in html_text

    # Outside fenced code blocks (whose content a Markdown renderer shows literally) no raw HTML remains.
    prose = re.sub(r"^(`{3,})[^\n]*\n.*?^\1$", "", md_text, flags=re.S | re.M)
    assert "<script" not in prose and "<img" not in prose and "&lt;script&gt;" in prose
    assert "a\\|b" in md_text  # the column name's pipe does not split the table
    assert "\\[link\\]" in md_text and "\\*bold\\*" in md_text
    assert "````sh\n" in md_text  # the command's ``` cannot close its fence


def test_rerender_is_byte_identical_and_pngs_carry_no_version(tmp_path):
    results = make_results()
    render_report(results, tmp_path / "a")
    render_report(json.loads(json.dumps(results)), tmp_path / "b")  # through JSON, as the CLI reads it
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + 3
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    png = next((tmp_path / "a" / "plots").glob("*.png")).read_bytes()
    assert b"Matplotlib" not in png and b"Software" not in png


def test_markdown_links_point_to_the_plots_the_html_embeds(tmp_path):
    html_path, md_path = render_report(make_results(), tmp_path)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert len(links) == 3
    md_pngs = []
    for link in links:
        target = md_path.parent / link
        assert target.is_file(), link
        md_pngs.append(target.read_bytes())
        assert md_pngs[-1].startswith(PNG_MAGIC)
    html_pngs = [
        base64.b64decode(a["src"].split(",", 1)[1])
        for t, a in _parse(html_path.read_text()).tags
        if t == "img"
    ]
    assert html_pngs == md_pngs


def test_numbers_shown_are_the_planted_ones(tmp_path):
    html_path, md_path = render_report(make_results(), tmp_path)
    cells = _parse(html_path.read_text()).cells
    # headline: value, CI, and a missing value as a dash
    assert cells[4:8] == ["parametric pass@1 after RL", "0.4321", "[0.39, 0.47]", "n=200"]
    assert cells[8:12] == ["humaneval pass@1", "—", "—", "skipped"]
    # stages: wall times, summaries, and the total as their sum
    assert cells[15:18] == ["data", "12.5", "documents = 321; source = stdlib"]
    assert cells[18:21] == ["pretrain", "100.2", "final_loss = 2.718"]
    assert cells[21:24] == ["total", "112.8", ""]
    # the table: 4 significant digits, None and NaN as dashes
    assert cells[27:33] == ["parametric", "0.1235", "0.5", "humaneval", "—", "—"]
    md_text = md_path.read_text()
    assert "| parametric pass@1 after RL | 0.4321 | \\[0.39, 0.47\\] | n=200 |" in md_text
    assert "| humaneval | — | — |" in md_text
    assert "Seed: 1234" in md_text and '"depth": 2' in md_text


def test_empty_sections_and_unplottable_curves_still_render(tmp_path):
    results = make_results()
    results["stages"], results["tables"], results["headline"] = [], [], []
    results["curves"] = [
        {"title": "nothing", "x_label": "x", "y_label": "y", "series": []},
        {"title": "all missing", "x_label": "x", "y_label": "y",
         "series": [{"name": "s", "x": [0, 1, None], "y": [float("nan"), float("inf"), 1.0]}]},
    ]  # fmt: skip
    html_path, md_path = render_report(results, tmp_path)
    imgs = [a for t, a in _parse(html_path.read_text()).tags if t == "img"]
    assert len(imgs) == 2  # one picture per curve, even with no points to draw
    assert "No tables were recorded." in md_path.read_text()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["01-nothing.png", "02-all-missing.png"]


def test_cli_rerenders_from_a_results_file_and_reports_bad_input_in_one_line(tmp_path, capsys):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(make_results()))
    assert main([str(results_path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    assert main([str(results_path)]) == 0  # default: beside the results file
    assert (tmp_path / "report.html").is_file()
    capsys.readouterr()

    broken = make_results()
    broken["headline"][1]["value"] = "high"
    results_path.write_text(json.dumps(broken))
    assert main([str(results_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{results_path}: results.headline[1].value: expected a number or null, got str"
    results_path.write_text("{not json")
    assert main([str(results_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{results_path}: not valid JSON:") and "\n" not in err


@pytest.mark.parametrize(
    "value, text",
    [(3, "3"), (0.123456, "0.1235"), (12.5, "12.5"), (12345.6, "12346"), (1e-5, "1e-05"),
     (None, "—"), (math.nan, "—"), (math.inf, "inf"), (2.0, "2")],
)  # fmt: skip
def test_number_format(value, text):
    assert fmt_number(value) == text


def test_public_api():
    import codefoundry.report

    assert sorted(codefoundry.report.__all__) == ["ResultsError", "render_report", "validate_results"]
