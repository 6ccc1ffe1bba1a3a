"""Rejection-sampling fine-tuning (`codefoundry rft`): sample n completions per problem, keep those that
pass the problem's tests in the sandbox, fine-tune on them with `codefoundry.train.sft`.

The verdict is `codefoundry.tasks.problem.evaluate_many`, the same call that scores benchmarks and
rewards RL: nothing else decides what is kept. Prompting is the eval harness's: the problem's prompt
continued by `Backend.complete`, cut at its stop strings (the kept pairs train with
`prompt_format="plain"`, so fine-tuning sees what sampling saw), or with `chat=True` the harness's chat
messages, the code extracted from the answer for grading and the whole answer kept as the reply.

Outputs in OUT: `samples.jsonl` (append-only, one record per sample with its verdict: task_id, sample,
prompt, completion, passed, fraction, status), `rft_data.jsonl` (the kept samples as SFT records, distinct
completions only, at most `max_per_problem` per problem), `sft/` (the fine-tuning run) and
`summary.json`. A rerun with the same OUT reuses every sample already recorded and draws only the
missing ones (sampling settings must match the recorded `rft_config.json`); `resume=True` also resumes
the fine-tuning run from `sft/checkpoint`.

Seeds (`chunk_seed`): with the `cf:` backend every call gets `seed` itself, since that backend keys each
sample's random stream by (seed, the prompt's tokens, sample number): a problem's samples are then the
same whatever `batch_problems` is and whichever problems a rerun still has to draw. The `hf:` backend
seeds torch's one generator per call and the openai backends send seed + k for sample k, so one seed for
every call would give the same random draws to the first problem of each call (hf) or to sample k of
every problem (openai). There each call's seed is a 30-bit hash of `seed` and the task_id of the call's
first problem: spread over 2^30 values (so seed + k rarely runs into another call's seeds), and not
moved by the problem's position in the list. What an hf: call draws still depends on which problems
share it (so on `batch_problems`, and on what a rerun has left to draw); a seeded openai server repeats
itself as far as the server does. (Before, the seed was `seed` + the chunk's first problem's position:
cf: samples moved with `batch_problems` and on a rerun, and openai's seed + k overlapped across calls.)

Limits: samples are drawn for `batch_problems` problems at a time, then graded; a kill loses at most
that batch's ungraded samples. A recorded sample is never re-graded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codefoundry.sandbox.result import MAX_SECONDS
from codefoundry.tasks.problem import Problem

SAMPLES, DATA, CONFIG, SUMMARY = "samples.jsonl", "rft_data.jsonl", "rft_config.json", "summary.json"
# Settings that decide what a recorded sample is: a rerun in the same OUT must keep them.
SAMPLING_FIELDS = (
    "task",
    "problems",
    "model",
    "n",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "chat",
    "init",
)


# What a recorded sample must hold to be reused, with its type (bool before int: True is an int too)
RECORD_FIELDS = {"task_id": str, "sample": int, "completion": str, "passed": bool, "fraction": (int, float),
                 "status": str}  # fmt: skip


@dataclass(frozen=True)
class RFTConfig:
    init: str  # the codefoundry checkpoint to fine-tune (and by default to sample from)
    out: str
    task: str | None = None  # a task name of codefoundry.tasks.registry
    problems: str | None = None  # or a problem file
    model: str | None = None  # sampling backend spec; None = cf:INIT
    n: int = 8
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    chat: bool = False
    limit: int | None = None  # only the first N problems
    max_per_problem: int | None = None  # keep at most this many distinct passing completions per problem
    cpu_seconds: float = 10.0  # sandbox limit per sample
    workers: int | None = None  # sandbox workers (None: CPU count)
    batch_problems: int = 8  # problems per sampling call
    sample_only: bool = False
    # the fine-tuning run on the kept samples (see SFTConfig)
    steps: int | None = None
    epochs: float = 3.0
    lr: float = 1e-4
    seq_len: int = 1024
    batch_size: int = 8
    grad_accum: int = 1
    eval_fraction: float = 0.0
    resume: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.task is None) == (self.problems is None):
            raise ValueError("RFTConfig: give exactly one of task or problems")
        checks = {
            "n": self.n >= 1,
            "limit": self.limit is None or self.limit >= 1,
            "max_per_problem": self.max_per_problem is None or self.max_per_problem >= 1,
            "cpu_seconds": 0 < self.cpu_seconds <= MAX_SECONDS,  # what Limits takes; refused before sampling
            "batch_problems": self.batch_problems >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"RFTConfig.{name}: invalid value {getattr(self, name)!r}")

    @property
    def model_spec(self) -> str:
        return self.model or f"cf:{self.init}"


def load_problems(cfg: RFTConfig) -> list[Problem]:
    from codefoundry.tasks.registry import load_problems_file, load_task

    problems = load_task(cfg.task) if cfg.task else load_problems_file(cfg.problems)
    problems = problems[: cfg.limit] if cfg.limit else problems
    if not problems:
        raise ValueError(f"{cfg.task or cfg.problems}: no problems")
    return problems


def read_samples(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Recorded samples by (task_id, sample); a torn last line (a killed writer) is ignored."""
    from codefoundry.train.metrics import read_metrics

    if not path.is_file():
        return {}
    records = read_metrics(path)
    for i, r in enumerate(records, start=1):  # a record lacking one was a KeyError naming only the field
        wrong = [k for k, kind in RECORD_FIELDS.items() if not isinstance(r.get(k), kind)]
        if wrong:
            raise ValueError(f"{path}: record {i} lacks {', '.join(wrong)} (or has the wrong type)")
    return {(r["task_id"], r["sample"]): r for r in records}


def check_config(cfg: RFTConfig, out: Path) -> None:
    """Record the sampling settings, or check that a rerun in `out` keeps them."""
    mine = {k: getattr(cfg, k) for k in SAMPLING_FIELDS} | {"model": cfg.model_spec}
    path = out / CONFIG
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: the message named no file
            raise ValueError(f"{path}: not a JSON config ({e})") from None
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: not a JSON object")
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"{out / SAMPLES}: recorded with {key}={saved.get(key)!r}, this run has {key}={value!r};"
                    " use another --out"
                )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")


def sample_problems(
    cfg: RFTConfig, problems: list[Problem], out: Path
) -> dict[tuple[str, int], dict[str, Any]]:
    """Draw and grade the samples not yet in OUT/samples.jsonl, appending each with its verdict."""
    from codefoundry.models.backends import SamplingParams, load_backend

    path = out / SAMPLES
    _drop_torn_tail(path)
    done = read_samples(path)
    todo = [p for p in problems if any((p.task_id, j) not in done for j in range(cfg.n))]
    if not todo:
        return done
    backend = load_backend(cfg.model_spec)
    with path.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), cfg.batch_problems):
            chunk = todo[start : start + cfg.batch_problems]
            params = _params(cfg, chunk, SamplingParams, seed=chunk_seed(cfg, chunk))
            for record in _grade(cfg, chunk, _draw(cfg, backend, chunk, params)):
                if (record["task_id"], record["sample"]) not in done:
                    f.write(json.dumps(record) + "\n")
                    done[(record["task_id"], record["sample"])] = record
            f.flush()
    return done


def chunk_seed(cfg: RFTConfig, chunk: list[Problem]) -> int:
    """The seed of the sampling call that draws `chunk` (see the module docstring): `cfg.seed` for the
    cf: backend, which keys every sample by its prompt; for the others a hash of `cfg.seed` and the
    chunk's first task_id, under 2^30 so that openai's seed + k stays a 32-bit int."""
    if cfg.model_spec.partition(":")[0] == "cf":
        return cfg.seed
    key = f"{cfg.seed}:{chunk[0].task_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 2**30


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line a kill left without its newline, so appended records start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _params(cfg: RFTConfig, chunk: list[Problem], cls, *, seed: int):
    from codefoundry.eval import generation_prompt

    stop = () if cfg.chat else generation_prompt(chunk[0])[1]
    return cls(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=stop,
               seed=seed)  # fmt: skip


def _draw(cfg: RFTConfig, backend, chunk: list[Problem], params) -> list[list[dict[str, Any]]]:
    """Per problem, n dicts: the prompt (text or messages), the completion graded, the raw answer."""
    from codefoundry.eval import generation_prompt
    from codefoundry.tasks.prompts import chat_messages, completion_from_chat

    if not cfg.chat:
        prompts = [generation_prompt(p)[0] for p in chunk]
        outs = backend.complete(prompts, params)
        return [[{"prompt": pr, "completion": c} for c in cs] for pr, cs in zip(prompts, outs, strict=True)]
    convs = [chat_messages(p) for p in chunk]
    outs = backend.chat(convs, params)
    return [
        [{"messages": conv, "answer": a, "completion": completion_from_chat(a, p)} for a in answers]
        for p, conv, answers in zip(chunk, convs, outs, strict=True)
    ]


def _grade(cfg: RFTConfig, chunk: list[Problem], drawn: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from codefoundry.sandbox import Limits
    from codefoundry.tasks.problem import evaluate_many

    pairs = [(p, d["completion"]) for p, ds in zip(chunk, drawn, strict=True) for d in ds]
    scores = evaluate_many(
        pairs, limits=Limits(cpu_seconds=cfg.cpu_seconds), workers=cfg.workers, progress=False
    )
    records, k = [], 0
    for p, ds in zip(chunk, drawn, strict=True):
        for j, d in enumerate(ds):
            s = scores[k]
            k += 1
            records.append({"task_id": p.task_id, "sample": j, **d, "passed": s.passed,
                            "fraction": s.fraction, "status": s.result.status.value})  # fmt: skip
    return records


def kept_records(cfg: RFTConfig, problems: list[Problem], samples: dict) -> list[dict[str, Any]]:
    """The passing samples as SFT records: distinct completions per problem, at most max_per_problem."""
    kept = []
    for p in problems:
        seen: set[str] = set()
        for j in range(cfg.n):
            r = samples.get((p.task_id, j))
            if r is None or not r["passed"] or r["completion"] in seen:
                continue
            if cfg.max_per_problem is not None and len(seen) >= cfg.max_per_problem:
                break
            seen.add(r["completion"])
            extra = {"task_id": p.task_id, "sample": j, "passed": True, "fraction": r["fraction"]}
            if cfg.chat:
                kept.append(
                    {"messages": [*r["messages"], {"role": "assistant", "content": r["answer"]}], **extra}
                )
            else:
                kept.append({"prompt": r["prompt"], "completion": r["completion"], **extra})
    return kept


def rft(cfg: RFTConfig) -> dict[str, Any]:
    """Sample, grade, keep, fine-tune; returns the summary (also written to OUT/summary.json)."""
    out = Path(cfg.out)
    problems = load_problems(cfg)
    check_config(cfg, out)
    samples = sample_problems(cfg, problems, out)
    kept = kept_records(cfg, problems, samples)
    tmp = out / (DATA + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(out / DATA)
    ours = [samples[(p.task_id, j)] for p in problems for j in range(cfg.n)]
    solved = {r["task_id"] for r in ours if r["passed"]}
    summary: dict[str, Any] = {
        "counts": {
            "problems": len(problems),
            "samples": len(ours),
            "passed": sum(r["passed"] for r in ours),
            "sandbox_errors": sum(r["status"] == "sandbox_error" for r in ours),
            "problems_solved": len(solved),
            "kept": len(kept),
        },
        "pass_rate": sum(r["passed"] for r in ours) / len(ours),
        "samples": str(out / SAMPLES),
        "data": str(out / DATA),
        "config": asdict(cfg),
        "sft": None,
    }
    if kept and not cfg.sample_only:
        summary["sft"] = _fine_tune(cfg, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _fine_tune(cfg: RFTConfig, out: Path) -> dict[str, Any]:
    from codefoundry.train.sft import SFTConfig, sft

    sft_cfg = SFTConfig(
        init=cfg.init, data=str(out / DATA), out=str(out / "sft"), prompt_format="chat" if cfg.chat else "plain",
        eval_fraction=cfg.eval_fraction, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum, steps=cfg.steps, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed,
        resume=cfg.resume, device=cfg.device, progress=cfg.progress,
    )  # fmt: skip
    return sft(sft_cfg)
