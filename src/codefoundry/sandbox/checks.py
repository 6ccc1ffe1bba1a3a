"""Checks of what `execute` and `execute_many` are given, made before anything runs.

A caller's mistake (a program that is not text, an unknown language, stdin that is neither text nor bytes,
a file name that leaves the work directory or is, or is inside, the program's own file, more data or files
than the run's work directory holds (its tmpfs gives each file whole pages), more stdin and files than a
worker's channel carries (MAX_REQUEST_BYTES), fewer processes than the language needs to start) is a
TypeError or ValueError whose one line names the argument, and in `execute_many` the program's index
(`programs[3].files['../x']: ...`). Unchecked, these came back as
`sandbox_error` results (a worker restarted for nothing), as verdicts (a 70 MB program "failed"; stdin=5
read as five NUL bytes; node under 8 processes aborted or waited for the wall-clock backstop; a file in a
directory named `main.py` failed with exit 70), or as tracebacks from inside a worker that left it out of
the pool. `Limits` and `Judge` check their own fields.
"""

from __future__ import annotations

import functools
import os
import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING

from codefoundry.sandbox.result import WORK_INODES, Judge, Limits
from codefoundry.sandbox.runners import LANGUAGES, Runner, runner_for

if TYPE_CHECKING:
    from codefoundry.sandbox.api import Program

BYTES_LIKE = (str, bytes, bytearray, memoryview)  # what stdin and file contents may be
# The work directory is a tmpfs: each file takes whole pages of it (an empty one none, a directory none).
PAGE = resource.getpagesize()
NAME_MAX = 255  # bytes of one name in a path (the kernel's)
PATH_BYTES = 4096 - 256  # bytes of a file's path under the work directory: PATH_MAX less room for that
# A run's request reaches its worker as one frame whose length is 4 bytes (worker.Worker._send): JSON, stdin
# and file contents in hex (2 bytes a byte), the source escaped (at most 6 bytes a byte: \u00XX). Past it,
# sending raised struct.error out of execute_many mid-run, and the results already computed were lost.
# Less room for the file names (4096 of PATH_BYTES, escaped: under 100 MB) and the request's other fields.
MAX_REQUEST_BYTES = (1 << 32) - 1 - (1 << 27)


def check_language(language: object, name: str) -> Runner:
    if not isinstance(language, str):
        raise TypeError(f"{name} must be a str, got {type(language).__name__}")
    try:
        return runner_for(language)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def check_limits(limits: object, name: str) -> None:
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError(f"{name} must be a Limits or None, got {type(limits).__name__}")


def check_program(program: Program, *, language: str, limits: Limits, at: str = "") -> None:
    """Raise for anything in `program` that cannot be run as asked; `language` and `limits` are the call's
    defaults (already checked, `check_rlimits` included). `at` names the program in messages: "" for
    `execute`'s own arguments, "programs[3]." for an entry of `execute_many`."""
    source_name = f"{at}source" if at else "program"
    if not isinstance(program.source, str):
        hint = " (decode it first)" if isinstance(program.source, bytes | bytearray) else ""
        raise TypeError(f"{source_name} must be a str, got {type(program.source).__name__}{hint}")
    lang = language if program.language is None else program.language
    runner = check_language(lang, f"{at}language")
    check_limits(program.limits, f"{at}limits")
    stdin = 0
    if program.stdin is not None:
        if not isinstance(program.stdin, BYTES_LIKE):
            raise TypeError(f"{at}stdin must be a str, bytes or None, got {type(program.stdin).__name__}")
        stdin = _size(program.stdin, f"{at}stdin")
    if program.judge is not None:
        if not isinstance(program.judge, Judge):
            raise TypeError(f"{at}judge must be a Judge or None, got {type(program.judge).__name__}")
        if runner is not LANGUAGES["python"]:
            raise ValueError(f"{at}judge: a Judge can only check Python programs, not {lang!r}")
    # The limits this program runs under, and their name in messages.
    own, name = (program.limits, f"{at}limits") if program.limits is not None else (limits, "limits")
    if own is not limits:  # the call's own limits are checked once, by the caller
        check_rlimits(own, name)
    if own.processes < runner.min_processes:
        raise ValueError(
            f"{name}.processes={own.processes}: a {lang} program needs at least {runner.min_processes} "
            "processes and threads to start"
        )
    disk = own.disk_mb
    size = _size(program.source, source_name)
    files_size, files_pages = _check_files(program.files, f"{at}files", runner)
    total, pages = size + files_size, -(-size // PAGE) + files_pages
    if pages > (disk << 20) // PAGE:
        what = (
            f"{source_name} and files: {total} bytes in all"
            if program.files
            else f"{source_name}: {total} bytes"
        )
        if total <= disk << 20:  # the tmpfs gives each file whole pages: 400 one-byte files take 1.6 MB
            what += f", stored as {pages} pages of {PAGE} bytes (a file takes whole pages)"
        raise ValueError(f"{what}, more than the run's work directory holds (Limits.disk_mb={disk})")
    _check_request(stdin, files_size, size, at, source_name)


def _check_request(stdin: int, files: int, source: int, at: str, source_name: str) -> None:
    """Refuse a run whose request is more than its worker's channel carries (MAX_REQUEST_BYTES), naming
    the largest part of it."""
    sent = 2 * (stdin + files) + 6 * source
    if sent <= MAX_REQUEST_BYTES:
        return
    parts = {f"{at}stdin": 2 * stdin, f"{at}files": 2 * files, source_name: 6 * source}
    raise ValueError(
        f"{max(parts, key=parts.__getitem__)}: {stdin} bytes of stdin, {files} of files and {source} of "
        f"source take {sent} bytes as sent to the worker (stdin and files in hex, the source as JSON at up "
        f"to 6 bytes a byte), more than the {MAX_REQUEST_BYTES} one run's request can carry"
    )


def check_rlimits(limits: Limits, name: str) -> None:
    """The sandbox inherits this process's hard rlimits and, without CAP_SYS_RESOURCE, cannot raise them:
    asked for more, the program's process failed before running, which read as a failed program."""
    if _can_raise_rlimits():
        return
    for field, which, unit in _RLIMITS:
        hard = resource.getrlimit(which)[1]
        value = getattr(limits, field)
        if hard != resource.RLIM_INFINITY and value * unit > hard:
            raise ValueError(
                f"{name}.{field}={value} is above this process's hard limit of {hard // unit}, "
                "which the sandbox cannot raise"
            )


_RLIMITS = (
    ("open_files", resource.RLIMIT_NOFILE, 1),
    ("processes", resource.RLIMIT_NPROC, 1),
    ("file_size_mb", resource.RLIMIT_FSIZE, 1 << 20),
    ("memory_mb", resource.RLIMIT_AS, 1 << 20),
    ("stack_mb", resource.RLIMIT_STACK, 1 << 20),
)


@functools.cache
def _can_raise_rlimits() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (capability 24) in its effective set."""
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caps.split()[1], 16) >> 24 & 1)


def _check_files(files: object, name: str, runner: Runner) -> tuple[int, int]:
    """The files' total size, in bytes and in the pages they take, once every name and content is known
    to be usable."""
    if files is None:
        return 0, 0
    if not isinstance(files, Mapping):
        raise TypeError(f"{name} must be a mapping of file name to content, got {type(files).__name__}")
    # The program's source file, and the binary a compiled language builds, would overwrite a file so named.
    own = {runner.filename, *(os.path.normpath(a) for a in runner.run if a.startswith("./"))}
    paths: dict[str, str] = {}  # normalised path -> the name as given
    total = pages = 0
    for key, content in files.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: file names must be str, got {type(key).__name__} {key!r:.40}")
        shown = repr(key) if len(key) <= 60 else f"{key[:40]!r}..."  # a 4000-byte name in one line
        where = f"{name}[{shown}]"
        if not isinstance(content, BYTES_LIKE):
            raise TypeError(f"{where} must be a str or bytes, got {type(content).__name__}")
        path = _relative_path(key, where)
        if path in own:
            raise ValueError(f"{where}: {path!r} is the name of the program's own file")
        if path in paths:
            raise ValueError(f"{where}: the same file as {name}[{paths[path]!r}]")
        paths[path] = key
        size = _size(content, where)
        total, pages = total + size, pages + -(-size // PAGE)
    dirs: set[str] = set()
    for path, key in paths.items():
        parent = os.path.dirname(path)
        while parent:
            if parent in paths:
                raise ValueError(f"{name}[{paths[parent]!r}]: a file, yet {name}[{key!r}] is inside it")
            if parent in own:  # the program's file (or a build's binary) cannot be made where it stands
                raise ValueError(
                    f"{name}[{key!r}]: {parent!r} is the name of the program's own file, not a directory"
                )
            dirs.add(parent)
            parent = os.path.dirname(parent)
    # The work directory is a tmpfs of WORK_INODES inodes: itself, the program's own files, these files
    # and their directories. Past that, writing the files failed inside the worker (a sandbox_error).
    inodes = 1 + len(own) + len(paths) + len(dirs)
    if inodes > WORK_INODES:
        raise ValueError(
            f"{name}: {len(paths)} files in {len(dirs)} directories, more than the {WORK_INODES} files and "
            "directories a run's work directory holds"
        )
    return total, pages


def _relative_path(key: str, where: str) -> str:
    if not key or "\0" in key:
        raise ValueError(f"{where}: a file name must be non-empty and hold no NUL character")
    if os.path.isabs(key):
        raise ValueError(f"{where}: an absolute path; names are relative to the program's work directory")
    if key.endswith("/"):
        raise ValueError(f"{where}: names a directory, not a file")
    path = os.path.normpath(key)
    if path in (".", "..") or path.startswith("../"):
        raise ValueError(f"{where}: leaves the program's work directory")
    # As the worker makes it (surrogateescape: a lone U+DC80..U+DCFF is the byte it escapes), within the
    # kernel's NAME_MAX and, below the work directory, PATH_MAX: past these, making the file failed inside
    # the worker (a sandbox_error).
    try:
        size = len(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: {path[e.start]!r} at index {e.start} cannot be a file name") from None
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in path.split("/"))
    if longest > NAME_MAX:
        raise ValueError(
            f"{where}: a name of {longest} bytes in it, over the {NAME_MAX} a file name may have"
        )
    if size > PATH_BYTES:
        raise ValueError(f"{where}: {size} bytes, over the {PATH_BYTES} a file's path may have")
    return path


def _size(data: str | bytes | bytearray | memoryview, name: str) -> int:
    """Bytes as written to the run's work directory: text as UTF-8, where a lone surrogate U+DC80..U+DCFF
    stands for the undecodable byte it escapes (open(..., errors="surrogateescape")); any other cannot."""
    if not isinstance(data, str):
        return memoryview(data).nbytes
    try:
        return len(data.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{name}: {data[e.start]!r} at index {e.start} cannot be written as UTF-8") from None
