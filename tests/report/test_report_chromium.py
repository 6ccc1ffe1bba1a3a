"""The HTML report opens in headless Chromium and every plot renders: a screenshot with content, and the
page's own count of decoded images (written onto <html> on load) equals the number of plots.

Skipped when no `chromium` binary is on PATH (.ci/run installs Debian's). Each browser run has a
60 s timeout; a failure shows Chromium's exit code and the tail of its stderr."""

import re
import shutil
import subprocess

import pytest

from codefoundry.report import render_report

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH")

N_PLOTS = 4


def _results() -> dict:
    curves = [
        {"title": f"curve {i}", "x_label": "step", "y_label": "value",
         "series": [{"name": "a", "x": [0, 1, 2, 3], "y": [i, i + 1.5, i + 0.5, i + 2]},
                    {"name": "b", "x": [0, 3], "y": [2 * i, None]}]}
        for i in range(N_PLOTS)
    ]  # fmt: skip
    return {
        "title": "chromium check",
        "command": "codefoundry quickstart",
        "config": {"depth": 2},
        "seed": 0,
        "versions": {"python": "3.11"},
        "stages": [{"name": "pretrain", "wall_s": 3.5, "summary": {"loss": 2.5}}],
        "curves": curves,
        "tables": [{"title": "t", "columns": ["k", "v"], "rows": [["a", 1], ["b", None]]}],
        "headline": [{"metric": "pass@1", "value": 0.5, "ci": [0.4, 0.6], "note": ""}],
    }


def _chromium(tmp_path, *args: str) -> str:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", *args,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 60 s: {' '.join(cmd)}")
    if proc.returncode != 0:
        pytest.fail(f"chromium exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _images_loaded(tmp_path, html_path) -> tuple[int, int]:
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri())
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, f"the page's load script did not run; DOM starts: {dom[:300]!r}"
    return int(loaded.group(1)), int(total.group(1))


def test_every_plot_renders_in_headless_chromium(tmp_path):
    html_path, _ = render_report(_results(), tmp_path / "out")
    assert _images_loaded(tmp_path, html_path) == (N_PLOTS, N_PLOTS)

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", html_path.as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        assert im.size == (1200, 3000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    # None means more than 65536 colours; either way the page is not one flat colour (a blank render).
    assert colours is None or len(colours) > 16, f"screenshot has only {len(colours)} colours"


def test_a_broken_plot_is_counted_as_not_loaded(tmp_path):
    # The check above is only worth something if a plot that fails to decode lowers the count.
    html_path, _ = render_report(_results(), tmp_path / "out")
    text = html_path.read_text()
    first = re.search(r"data:image/png;base64,[A-Za-z0-9+/=]+", text)
    html_path.write_text(text[: first.start()] + "data:image/png;base64,AAAA" + text[first.end() :])
    assert _images_loaded(tmp_path, html_path) == (N_PLOTS - 1, N_PLOTS)
