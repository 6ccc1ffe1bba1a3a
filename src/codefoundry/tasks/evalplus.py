"""EvalPlus-format benchmarks (HumanEval+, MBPP+ and any JSONL in their schema): base and "+" tests.

A record has `task_id, prompt, entry_point, canonical_solution, base_input, plus_input, atol` (and optionally
`contract`, kept in metadata). The files carry inputs only: the expected outputs are computed by running the
canonical solution (`prompt + "\\n" + canonical_solution`, as EvalPlus does) on every input in the sandbox,
one program per task, never in this process. They are cached in a JSON file next to the data, keyed by a
hash of the reference program and its inputs, so a changed solution or input is recomputed.

Each `Problem` gets one test snippet per input, `evalplus_check(i)`: the judge calls the candidate with
that input and compares with the expected value. The rule (EvalPlus's, written out): when the expected
value is a float, or a non-empty list or tuple of floats, each number must satisfy
|out - exp| <= atol + 1e-7 * |exp|, with atol taken as 1e-6 when the task's `atol` is 0, and nan matching
nan; any other value must be `==`. `split="base"` keeps the original tests only; `split="plus"` (default)
runs base and plus inputs, so `Score.passed` is the stricter "+" verdict.

Values travel from the reference run as JSON with tags, so that nothing is lost on the way:
None, bool, int (any size), str and list are plain JSON; a float is {"float": repr(x)} (exact, including
nan, inf and -0.0); tuple, set and frozenset are {"tuple"|"set"|"frozenset": [items]}; dict is
{"dict": [[key, value], ...]} (keys need not be strings); bytes {"bytes": hex}; complex
{"complex": [repr(real), repr(imag)]}. Subclasses of these (an IntEnum, a numpy float64) are sent as their
base type, objects with a `tolist()` (numpy) as its result; anything else makes the reference run fail.
Inputs are used as the file's JSON gives them, as EvalPlus does.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path

from codefoundry.jsonl import iter_records
from codefoundry.sandbox import Limits, Program, execute_many
from codefoundry.tasks.problem import Problem

__all__ = [
    "DEFAULT_FLOAT_ATOL",
    "evalplus_decode",
    "evalplus_encode",
    "evalplus_match",
    "expected_outputs",
    "load",
    "problem_from_record",
]

DEFAULT_FLOAT_ATOL = 1e-6  # used for float outputs when a task's atol is 0
CACHE_VERSION = 1  # bump when the encoding or the reference program changes
REFERENCE_LIMITS = Limits(cpu_seconds=60.0, memory_mb=4096, output_bytes=64 << 20)


# -- the value encoding. These functions also run inside the sandbox and the judge (their source is sent
# -- there), so they use no module globals and only builtin names in annotations -------------------------
def evalplus_encode(value: object) -> object:
    """A value as tagged JSON (see the module docstring); raises TypeError for anything else."""
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return {"float": repr(float(value))}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [evalplus_encode(v) for v in value]
    if isinstance(value, tuple | set | frozenset):
        tag = "tuple" if isinstance(value, tuple) else "frozenset" if isinstance(value, frozenset) else "set"
        return {tag: [evalplus_encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[evalplus_encode(k), evalplus_encode(v)] for k, v in value.items()]}
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"complex": [repr(value.real), repr(value.imag)]}
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return evalplus_encode(tolist())
    raise TypeError(f"cannot encode a value of type {type(value).__name__}")


def evalplus_decode(data: object) -> object:
    """The inverse of `evalplus_encode`."""
    if isinstance(data, list):
        return [evalplus_decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    ((tag, body),) = data.items()
    if tag == "float":
        return float(body)
    if tag in ("tuple", "set", "frozenset"):
        kind = {"tuple": tuple, "set": set, "frozenset": frozenset}[tag]
        return kind(evalplus_decode(v) for v in body)
    if tag == "dict":
        return {evalplus_decode(k): evalplus_decode(v) for k, v in body}
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(float(body[0]), float(body[1]))
    raise ValueError(f"unknown value tag {tag!r}")


def evalplus_match(out: object, exp: object, atol: float) -> bool:
    """Whether a candidate's output counts as the expected one (the rule in the module docstring)."""
    floats = type(exp) is float or (
        type(exp) in (list, tuple) and len(exp) > 0 and all(type(e) is float for e in exp)
    )
    if not floats:
        return bool(out == exp)  # plain data from the judge; a handle to an object never equals a value
    tol = atol if atol > 0 else 1e-6  # DEFAULT_FLOAT_ATOL, spelled out: this also runs in the judge
    if type(exp) is float:
        pairs = [(out, exp)]
    elif type(out) in (list, tuple) and len(out) == len(exp):
        pairs = list(zip(out, exp, strict=True))
    else:
        return False
    for o, e in pairs:
        if type(o) not in (int, float):
            return False
        if o == e or (e != e and o != o):  # equal, infinities included; nan matches nan
            continue
        if e != e or o != o or abs(e) == float("inf") or abs(o) == float("inf"):
            return False  # nan or an infinity against anything else
        if abs(o - e) > tol + 1e-7 * abs(e):
            return False
    return True


def evalplus_check(i: int) -> None:
    """One judge test: the candidate on input `i` against the expected output (runs in the judge)."""
    import reprlib

    args = EVALPLUS_INPUTS[i]  # noqa: F821 -- defined by the judge's setup
    out = candidate(*args)  # noqa: F821 -- bound by the judge to the program's function
    exp = EVALPLUS_EXPECTED[i]  # noqa: F821
    if not evalplus_match(out, exp, EVALPLUS_ATOL):  # noqa: F821
        raise AssertionError(f"input {i} {reprlib.repr(args)}: expected {reprlib.repr(exp)}, "
                             f"got {reprlib.repr(out)}")  # fmt: skip


# -- loading ---------------------------------------------------------------------------------------------
def load(
    path: str | Path,
    *,
    split: str = "plus",
    cache_path: str | Path | None = None,
    workers: int | None = None,
    limits: Limits | None = None,
    progress: bool = False,
) -> list[Problem]:
    """Problems from an EvalPlus-format JSONL (or .jsonl.gz) file, with expected outputs computed by the
    canonical solutions in the sandbox (or read from the cache; default: `<name>.expected.json` beside
    the file). `limits` apply to each task's reference run (default `REFERENCE_LIMITS`)."""
    if split not in ("base", "plus"):
        raise ValueError(f"unknown EvalPlus split {split!r}; use 'base' or 'plus'")
    path = Path(path)
    records = _read(path)
    if cache_path is None:
        stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
        cache_path = path.with_name(stem + ".expected.json")
    outputs = expected_outputs(records, cache_path=cache_path, workers=workers, limits=limits,
                               progress=progress, source=str(path))  # fmt: skip
    return [problem_from_record(r, out, split=split) for r, out in zip(records, outputs, strict=True)]


def _read(path: Path) -> list[dict]:
    required = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input")
    return [record for _, record in iter_records(path, required=required)]


def problem_from_record(record: dict, expected: dict[str, list], *, split: str = "plus") -> Problem:
    """One record as a judged Problem, given its expected outputs {"base": [...], "plus": [...]} in the
    tagged encoding."""
    inputs = list(record["base_input"])
    outputs = list(expected["base"])
    if split == "plus":
        inputs += record.get("plus_input") or []
        outputs += expected["plus"]
    atol = float(record.get("atol") or 0.0)
    setup = "\n".join([
        "import json",
        inspect.getsource(evalplus_decode),
        inspect.getsource(evalplus_match),
        inspect.getsource(evalplus_check),
        f"EVALPLUS_ATOL = {atol!r}",
        f"EVALPLUS_INPUTS = json.loads({json.dumps(inputs)!r})",
        f"EVALPLUS_EXPECTED = evalplus_decode(json.loads({json.dumps(outputs)!r}))",
    ])  # fmt: skip
    return Problem(
        task_id=record["task_id"],
        prompt=record["prompt"],
        entry_point=record["entry_point"],
        tests=tuple(f"evalplus_check({i})" for i in range(len(inputs))),
        setup=setup + "\n",
        canonical_solution=record["canonical_solution"],
        metadata={
            "split": split,
            "atol": atol,
            "contract": record.get("contract", ""),
            "n_base": len(record["base_input"]),
            "n_plus": len(record.get("plus_input") or []) if split == "plus" else 0,
        },
    )


# -- expected outputs ------------------------------------------------------------------------------------
def reference_program(record: dict) -> str:
    """The program that prints the canonical solution's outputs for the inputs it reads on stdin
    ({"base": [...], "plus": [...]}) as one JSON line of {"ok": value} or {"error": "..."} per input."""
    return "\n".join([
        record["prompt"],
        record["canonical_solution"],
        "",
        inspect.getsource(evalplus_encode),
        "def _evalplus_outputs():",
        "    import io, json, sys",
        f"    fn = globals()[{record['entry_point']!r}]",
        "    inputs = json.loads(sys.stdin.read())",
        "    stdout, sys.stdout = sys.stdout, io.StringIO()  # what the solution prints is not the answer",
        "    result = {}",
        "    for part in ('base', 'plus'):",
        "        result[part] = []",
        "        for args in inputs[part]:",
        "            try:",
        "                result[part].append({'ok': evalplus_encode(fn(*args))})",
        "            except Exception as e:",
        "                result[part].append({'error': f'{type(e).__name__}: {e}'[:300]})",
        "            sys.stdout = io.StringIO()",
        "    stdout.write(json.dumps(result) + '\\n')",
        "",
        "_evalplus_outputs()",
        "",
    ])  # fmt: skip


def _key(record: dict) -> str:
    material = [
        CACHE_VERSION,
        reference_program(record),
        record["base_input"],
        record.get("plus_input") or [],
    ]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()


def expected_outputs(
    records: Sequence[dict],
    *,
    cache_path: str | Path | None = None,
    workers: int | None = None,
    limits: Limits | None = None,
    progress: bool = False,
    source: str = "EvalPlus data",
) -> list[dict[str, list]]:
    """Per record, {"base": [...], "plus": [...]} expected outputs (tagged encoding), from the cache or by
    running the canonical solutions in the sandbox; new results are added to the cache before any error
    about a failing reference is raised, so nothing computed is lost."""
    cache = _read_cache(Path(cache_path)) if cache_path is not None else {}
    keys = [_key(r) for r in records]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    programs = [
        Program(reference_program(records[i]), language="python", stdin=json.dumps(
            {"base": records[i]["base_input"], "plus": records[i].get("plus_input") or []}))
        for i in todo
    ]  # fmt: skip
    results = execute_many(programs, workers=workers, limits=limits or REFERENCE_LIMITS, progress=progress,
                           description="reference outputs") if programs else []  # fmt: skip
    errors = []
    for i, result in zip(todo, results, strict=True):
        task = records[i]["task_id"]
        if not result.passed:
            detail = result.message or (result.stderr.strip().splitlines() or [""])[-1]
            errors.append(f"{source}: {task}: the reference run failed ({result.status.value}): {detail}")
            continue
        parsed = json.loads(result.stdout.strip().splitlines()[-1])
        bad = [(part, n, o["error"]) for part in ("base", "plus") for n, o in enumerate(parsed[part])
               if "error" in o]  # fmt: skip
        if bad:
            part, n, err = bad[0]
            errors.append(f"{source}: {task}: the canonical solution raised on {part} input {n}: {err}")
            continue
        cache[keys[i]] = {part: [o["ok"] for o in parsed[part]] for part in ("base", "plus")}
    if results and cache_path is not None:
        _write_cache(Path(cache_path), cache)
    if errors:
        raise ValueError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return [cache[k] for k in keys]


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable expected-output cache ({e}); delete it to recompute") from None
    if data.get("version") != CACHE_VERSION:
        return {}
    return dict(data["outputs"])


def _write_cache(path: Path, cache: dict[str, dict]) -> None:
    """Atomically; a folder we may not write to (read-only shared data) only means no caching."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "outputs": cache}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
