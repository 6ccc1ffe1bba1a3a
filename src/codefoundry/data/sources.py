"""Sources: where the documents come from, enumerated as one stable, sorted stream of `SourceFile`s.

- `DirectorySource`: the files under a directory, skipping VCS and cache folders, virtualenvs, nested
  site-packages, symlinks that leave the root and symlinked folders (loops).
- `GitSource`: the files of a git repository (bare or not) at a revision, listed by `git ls-tree` and
  read through one long-lived `git cat-file --batch` per repository and process.
- `RecordSource`: JSONL (optionally .gz) or Parquet files whose records are documents; Parquet is read
  in row batches with pyarrow (imported only here).
- `DistributionSource` / `default_sources()`: the running interpreter's standard library and each
  installed distribution, which gives real code under many real licences.

Memory stays bounded: a `SourceFile` carries a locator, not the bytes (records carry their own text, one
at a time). Listing a directory holds one folder's entries per level; a git listing streams; a
distribution's file list (paths only) comes from its RECORD. Order: sources as given, then files sorted
by path (directories walk folders as "name/" so the walk order equals the sorted order of full paths).

Files over `max_bytes` are yielded unread with `dropped="too_large"` so the pipeline can count them;
likewise `missing` (listed in a RECORD but absent) and `bad_path` (a name that is not UTF-8)."""

from __future__ import annotations

import atexit
import os
import posixpath
import re
import site
import subprocess
import sysconfig
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Protocol

from codefoundry.data.licenses import declared_license, looks_like_license_file
from codefoundry.jsonl import RecordError, iter_records

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DirectorySource",
    "DistributionSource",
    "GitSource",
    "LicenseEvidence",
    "RecordSource",
    "Source",
    "SourceError",
    "SourceFile",
    "close_git_readers",
    "default_sources",
    "iter_files",
]

DEFAULT_MAX_BYTES = 1_000_000
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox", ".mypy_cache", ".pytest_cache",
     ".ruff_cache"}
)  # fmt: skip
_SITE_DIRS = ("site-packages", "dist-packages")
_GIT_LOCATOR = re.compile(r"git:(.*?)@((?:[0-9a-f]{40}|[0-9a-f]{64}):.*)", re.S)  # git dir, "<commit>:<path>"


class SourceError(ValueError):
    """An input that cannot be listed or read; the message is one line naming it and what is wrong."""


@dataclass(frozen=True)
class SourceFile:
    """One input file or record. `id` is `repo:path` (`file#line` / `file#row` for records); `source` is
    the kind of input ("directory", "git", "stdlib", "site-packages", "jsonl", "parquet"); `locator`
    says where the bytes are (an absolute path, `git:<git_dir>@<commit>:<path>`, or `file#line` for a
    record, whose bytes travel in `data`). `dropped` names why the file was not read ("" when it was
    fine); `license` is a record's own declared licence (SPDX), "" when it declared none."""

    repo: str
    path: str
    source: str
    locator: str
    size: int
    id: str
    dropped: str = ""
    license: str = ""
    data: bytes | None = field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        """The file's bytes. Raises SourceError (naming the locator) when it cannot be read."""
        if self.data is not None:
            return self.data
        git = _GIT_LOCATOR.match(self.locator)
        if git:
            return _git_reader(git[1]).read(git[2])
        try:
            with open(self.locator, "rb") as f:
                return f.read()
        except OSError as e:
            raise SourceError(f"{self.locator}: cannot read ({e.strerror or e})") from None


@dataclass(frozen=True)
class LicenseEvidence:
    """What the licence audit reads for one repo: licence-looking files (path → text) and package
    metadata in METADATA form (or None)."""

    repo: str
    files: dict[str, str]
    metadata: str | None = None


class Source(Protocol):
    """An input. `repo` is its one repository name, or None when records name their own; `describe()` is
    one line for the manifest's inputs; `files()` yields every file sorted by path (records in file
    order); `license_evidence()` yields licence files and metadata per repo (none for record files)."""

    repo: str | None

    def describe(self) -> str: ...

    def files(self) -> Iterator[SourceFile]: ...

    def license_evidence(self) -> Iterator[LicenseEvidence]: ...


def iter_files(sources: Iterable[Source]) -> Iterator[SourceFile]:
    """Files of every source, sources in the given order. Two sources may not share a repo name (ids
    would collide); that raises SourceError before the second source is read."""
    seen: dict[str, str] = {}
    for source in sources:
        if source.repo is not None:
            if source.repo in seen:
                raise SourceError(
                    f"{source.describe()}: repo name {source.repo!r} is already used by {seen[source.repo]};"
                    " pass repo=... to tell them apart"
                )
            seen[source.repo] = source.describe()
        yield from source.files()


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")  # a licence in Latin-1 still matches its phrases


def _evidence(
    repo: str, entries: Iterable[tuple[str, int]], read: Callable[[str], bytes], *, max_bytes: int
) -> LicenseEvidence:
    """Evidence from a repo root's (name, size) entries: licence files, then PKG-INFO or pyproject.toml."""
    entries = [(name, size) for name, size in entries if size <= max_bytes]
    files = {name: _text(read(name)) for name, _ in entries if looks_like_license_file(name)}
    names = {name for name, _ in entries}
    meta = None
    if "PKG-INFO" in names:
        meta = _text(read("PKG-INFO"))
    elif "pyproject.toml" in names:
        meta = _pyproject_metadata(_text(read("pyproject.toml")))
    return LicenseEvidence(repo, files, meta)


def _pyproject_metadata(text: str) -> str | None:
    """The licence part of a pyproject.toml's [project] table, written as METADATA headers."""
    try:
        project = tomllib.loads(text).get("project", {})
    except tomllib.TOMLDecodeError:
        return None
    lines = []
    lic = project.get("license")
    if isinstance(lic, str):
        lines.append(f"License-Expression: {lic}")
    elif isinstance(lic, dict) and isinstance(lic.get("text"), str):
        lines.append("License: " + lic["text"].replace("\n", "\n        "))  # RFC 822 continuation lines
    lines += [f"Classifier: {c}" for c in project.get("classifiers", []) if isinstance(c, str)]
    return "\n".join(lines) + "\n" if lines else None


# ---------------------------------------------------------------------------------------------------
# Local directories


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class DirectorySource:
    """The files under `root` as one repo (named after the directory unless `repo` is given)."""

    def __init__(
        self,
        root: str | Path,
        *,
        repo: str | None = None,
        source: str = "directory",
        max_bytes: int = DEFAULT_MAX_BYTES,
        skip_dirs: frozenset[str] = SKIP_DIRS,
    ) -> None:
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise SourceError(f"{root}: not a directory")
        self.repo = repo or os.path.basename(self.root)
        self.kind = source
        self.max_bytes = max_bytes
        self.skip_dirs = skip_dirs
        self._real_root = os.path.realpath(self.root)
        # Nested site-packages are someone else's code, unless the root is itself inside one.
        self._skip_site = not any(part in _SITE_DIRS for part in Path(self._real_root).parts)

    def describe(self) -> str:
        return f"{self.kind}:{self.root}"

    def files(self) -> Iterator[SourceFile]:
        yield from self._walk(self.root, "")

    def _walk(self, folder: str, prefix: str) -> Iterator[SourceFile]:
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise SourceError(f"{folder}: cannot list ({e.strerror or e})") from None
        keyed = []
        for entry in entries:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not _inside(target, self._real_root) or not os.path.isfile(target):
                    continue  # leaves the root, dangles, or is a folder (a loop waiting to happen)
                keyed.append((entry.name, entry, False))
            elif entry.is_dir(follow_symlinks=False):
                if entry.name in self.skip_dirs or (self._skip_site and entry.name in _SITE_DIRS):
                    continue
                keyed.append((entry.name + "/", entry, True))
            elif entry.is_file(follow_symlinks=False):
                keyed.append((entry.name, entry, False))
        keyed.sort(key=lambda k: k[0])
        for _, entry, is_dir in keyed:
            path = prefix + entry.name
            if is_dir:
                yield from self._walk(entry.path, path + "/")
            else:
                yield self._file(entry, path)

    def _file(self, entry: os.DirEntry, path: str) -> SourceFile:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return SourceFile(self.repo, shown, self.kind, entry.path, 0, f"{self.repo}:{shown}", "bad_path")
        try:
            size = entry.stat().st_size
            dropped = "too_large" if size > self.max_bytes else ""
        except OSError:  # removed since the folder was listed
            size, dropped = 0, "missing"
        return SourceFile(self.repo, path, self.kind, entry.path, size, f"{self.repo}:{path}", dropped)

    def license_evidence(self) -> Iterator[LicenseEvidence]:
        entries = []
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.is_file():  # follows a symlink; the root's own LICENSE may be one
                    entries.append((entry.name, entry.stat().st_size))
        yield _evidence(
            self.repo, entries, lambda n: Path(self.root, n).read_bytes(), max_bytes=self.max_bytes
        )


# ---------------------------------------------------------------------------------------------------
# Git repositories


def _git(git_dir: str, *args: str, what: str) -> str:
    """stdout of a short git command; a failure becomes one line naming the repository and `what`."""
    try:
        done = subprocess.run(["git", "-C", git_dir, *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise SourceError(f"{git_dir}: git is not installed") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SourceError(f"{what}: {reason[-1] if reason else f'git {args[0]} failed'}")
    return done.stdout.decode("utf-8", "replace").strip()


class _CatFile:
    """One `git cat-file --batch` process: ask for an object by name, read its bytes back."""

    def __init__(self, git_dir: str) -> None:
        self.git_dir = git_dir
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["git", "-C", git_dir, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def read(self, spec: str) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(spec.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
            header = self.proc.stdout.readline().split()  # b"<oid> <type> <size>" or b"<spec> missing"
            if len(header) != 3 or header[1] != b"blob":
                raise SourceError(f"git:{self.git_dir}@{spec}: not a file in the repository")
            data = self.proc.stdout.read(int(header[2]))
            self.proc.stdout.read(1)  # the newline after the contents
        return data

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait()


# One reader per (process, repository): a forked worker must not share its parent's pipes.
_READERS: dict[tuple[int, str], _CatFile] = {}
_READERS_LOCK = threading.Lock()


def _git_reader(git_dir: str) -> _CatFile:
    key = (os.getpid(), git_dir)
    with _READERS_LOCK:
        if key not in _READERS:
            _READERS[key] = _CatFile(git_dir)
        return _READERS[key]


@atexit.register
def close_git_readers() -> None:
    """End this process's `git cat-file` processes (they restart on the next read)."""
    pid = os.getpid()
    with _READERS_LOCK:
        for key in [k for k in _READERS if k[0] == pid]:
            _READERS.pop(key).close()


def _repo_name_from_url(url: str) -> str:
    name = re.split(r"[/:]", url.rstrip("/"))[-1]
    return name.removesuffix(".git")


class GitSource:
    """The files of a git repository at `revision`, as one repo. The name comes from the `origin`
    remote's URL when there is one, else from the directory ("proj.git" → "proj"). Symlinks and
    submodules are skipped (not content of this repository)."""

    def __init__(
        self, repo_dir: str | Path, *, revision: str = "HEAD", repo: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:  # fmt: skip
        where = f"GitSource {repo_dir} @ {revision}"
        if not os.path.isdir(repo_dir):
            raise SourceError(f"{where}: no such directory")
        git_dir = _git(
            str(repo_dir), "rev-parse", "--absolute-git-dir", what=f"{where}: not a git repository"
        )
        try:
            self.commit = _git(
                git_dir, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", what=where
            )
        except SourceError:
            raise SourceError(f"{where}: revision {revision!r} not found") from None
        self.git_dir, self.revision, self.max_bytes = git_dir, revision, max_bytes
        if repo is None:
            try:
                repo = _repo_name_from_url(_git(git_dir, "config", "--get", "remote.origin.url", what=where))
            except SourceError:  # no remote: name the repository after its directory
                top = os.path.dirname(git_dir) if os.path.basename(git_dir) == ".git" else git_dir
                repo = os.path.basename(top).removesuffix(".git")
        self.repo = repo

    def describe(self) -> str:
        return f"git:{self.git_dir}@{self.commit}"

    def _ls_tree(self, *, recursive: bool) -> Iterator[tuple[str, str, int]]:
        """(mode, path, size) of blobs at the commit, streamed from `git ls-tree -z --long`."""
        args = ["git", "-C", self.git_dir, "ls-tree", "-z", "--long", "--full-tree"]
        args += ["-r", self.commit] if recursive else [self.commit]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            buf = b""
            while chunk := proc.stdout.read(1 << 16):
                *records, buf = (buf + chunk).split(b"\0")
                for record in records:
                    meta, _, raw_path = record.partition(b"\t")
                    mode, kind, _, size = meta.split()
                    if kind == b"blob":
                        yield mode.decode(), raw_path.decode("utf-8", "surrogateescape"), int(size)
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            if proc.wait() != 0:
                raise SourceError(f"{self.describe()}: git ls-tree failed ({err})")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()

    def files(self) -> Iterator[SourceFile]:
        for mode, path, size in self._ls_tree(recursive=True):
            if mode == "120000":
                continue  # a symlink's blob is its target's name, not code
            locator = f"git:{self.git_dir}@{self.commit}:{path}"
            try:
                path.encode("utf-8")
                dropped = "too_large" if size > self.max_bytes else ""
            except UnicodeEncodeError:
                path = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                dropped = "bad_path"
            if "\n" in path:
                dropped = "bad_path"  # cat-file --batch reads one name per line
            yield SourceFile(self.repo, path, "git", locator, size, f"{self.repo}:{path}", dropped)

    def license_evidence(self) -> Iterator[LicenseEvidence]:
        entries = [(path, size) for mode, path, size in self._ls_tree(recursive=False) if mode != "120000"]
        reader = _git_reader(self.git_dir)
        yield _evidence(
            self.repo, entries, lambda n: reader.read(f"{self.commit}:{n}"), max_bytes=self.max_bytes
        )


# ---------------------------------------------------------------------------------------------------
# JSONL / Parquet records

_TEXT_FIELDS = ("content", "text")
_RECORD_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class RecordSource:
    """Each record of a JSONL (.jsonl, .jsonl.gz) or Parquet file is one document.

    The text comes from `text_field` (default: "content", else "text"). `repo_field`, `path_field` and
    `license_field` default to "repo", "path" and "license" when a record has them (repo falls back to the
    file's name, path to ""); a field named explicitly must be there. A malformed line, a missing field or
    a value of the wrong type raises RecordError naming the file and the line (or row, 0-based)."""

    repo = None  # records name their own repos

    def __init__(
        self, path: str | Path, *, text_field: str | None = None, repo_field: str | None = None,
        path_field: str | None = None, license_field: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
        batch_rows: int = 1024,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        suffix = self.path.suffixes[-2] if self.path.suffix == ".gz" and len(self.path.suffixes) > 1 else ""
        self.format = _RECORD_SUFFIXES.get(suffix if suffix == ".jsonl" else self.path.suffix)
        if self.format is None:
            raise SourceError(f"{path}: not a record file (expected .jsonl, .jsonl.gz, .parquet)")
        self.text_field, self.max_bytes, self.batch_rows = text_field, max_bytes, batch_rows
        # (field name, required): explicit names are required, the conventional ones optional.
        self.fields = {
            "repo": (repo_field or "repo", repo_field is not None),
            "path": (path_field or "path", path_field is not None),
            "license": (license_field or "license", license_field is not None),
        }
        self.default_repo = self.path.name.split(".")[0]

    def describe(self) -> str:
        return f"{self.format}:{self.path}"

    def license_evidence(self) -> Iterator[LicenseEvidence]:
        return iter(())

    def files(self) -> Iterator[SourceFile]:
        if self.format == "jsonl":
            for lineno, record in iter_records(self.path):
                yield self._file(f"{self.path}:{lineno}", f"{self.path}#{lineno}", record)
        else:
            for row, record in self._parquet_rows():
                yield self._file(f"{self.path}: row {row}", f"{self.path}#{row}", record)

    def _file(self, where: str, ident: str, record: dict) -> SourceFile:
        text_field = self.text_field or next((f for f in _TEXT_FIELDS if f in record), _TEXT_FIELDS[0])
        text = record.get(text_field)
        if text_field not in record:
            raise RecordError(f"{where}: record lacks {text_field!r}")
        if not isinstance(text, (str, bytes)):  # bytes: a Parquet binary column, decoded later
            raise RecordError(f"{where}: {text_field!r} is {type(text).__name__}, expected a string")
        values = {}
        for key, (name, required) in self.fields.items():
            value = record.get(name)
            if value is None and required:
                raise RecordError(f"{where}: record lacks {name!r}")
            ok = isinstance(value, str) or (key == "license" and isinstance(value, list))
            if value is not None and not ok:
                raise RecordError(f"{where}: {name!r} is {type(value).__name__}, expected a string")
            values[key] = value
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        too_large = len(data) > self.max_bytes
        return SourceFile(
            repo=values["repo"] or self.default_repo, path=values["path"] or "", source=self.format,
            locator=ident, size=len(data), id=ident, dropped="too_large" if too_large else "",
            license=declared_license(values["license"]) if values["license"] is not None else "",
            data=None if too_large else data,
        )  # fmt: skip

    def _parquet_rows(self) -> Iterator[tuple[int, dict]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError(f"{self.path}: reading Parquet needs pyarrow (pip install 'codefoundry[data]')")
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises OSError or ArrowInvalid for files it cannot open
            raise SourceError(f"{self.path}: cannot read as Parquet ({e})") from None
        names = pf.schema_arrow.names
        text = self.text_field or next((f for f in _TEXT_FIELDS if f in names), _TEXT_FIELDS[0])
        wanted = [text] + [name for name, _ in self.fields.values()]
        required = [text] + [name for name, req in self.fields.values() if req]
        missing = [c for c in required if c not in names]
        if missing:
            raise RecordError(f"{self.path}: no column {missing[0]!r} (columns: {', '.join(names)})")
        columns = [c for c in dict.fromkeys(wanted) if c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=self.batch_rows, columns=columns):
            values = {c: batch.column(c).to_pylist() for c in columns}  # one batch in memory at a time
            for i in range(batch.num_rows):
                yield row, {c: values[c][i] for c in columns if values[c][i] is not None}
                row += 1


# ---------------------------------------------------------------------------------------------------
# Installed distributions and the default corpus


def _dist_paths(dist: importlib_metadata.Distribution) -> list[str]:
    """A distribution's files (from RECORD) that lie inside its site directory, sorted, without caches."""
    paths = set()
    for f in dist.files or ():
        rel = posixpath.normpath(str(f))
        if rel.startswith("../") or rel == ".." or posixpath.isabs(rel):
            continue  # scripts in bin/, data files outside site-packages
        if not SKIP_DIRS.intersection(rel.split("/")[:-1]):
            paths.add(rel)
    return sorted(paths)


class DistributionSource:
    """The files of one installed distribution (from its RECORD) as one repo named after it. `paths`
    restricts them (default_sources passes each file to one distribution only)."""

    def __init__(
        self, dist: importlib_metadata.Distribution, *, paths: Iterable[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:  # fmt: skip
        self.dist = dist
        self.repo = dist.metadata["Name"]
        self.root = os.path.abspath(str(dist.locate_file("")))
        self.paths = sorted(paths) if paths is not None else _dist_paths(dist)
        self.max_bytes = max_bytes

    def describe(self) -> str:
        return f"site-packages:{self.repo}=={self.dist.version}"

    def files(self) -> Iterator[SourceFile]:
        for rel in self.paths:
            full = os.path.join(self.root, rel)
            try:
                size = os.stat(full).st_size
                dropped = "too_large" if size > self.max_bytes else ""
            except OSError:
                size, dropped = 0, "missing"
            yield SourceFile(self.repo, rel, "site-packages", full, size, f"{self.repo}:{rel}", dropped)

    def license_evidence(self) -> Iterator[LicenseEvidence]:
        meta = self.dist.read_text("METADATA") or self.dist.read_text("PKG-INFO")
        files = {}
        for f in self.dist.files or ():
            parts = f.parts
            if not parts[0].endswith((".dist-info", ".egg-info")) or len(parts) < 2:
                continue
            # PEP 639 puts them in licenses/, older maturin wheels in license_files/, others at the top.
            if (len(parts) > 2 and parts[1] in ("licenses", "license_files")) or (
                len(parts) == 2 and looks_like_license_file(parts[1])
            ):
                full = os.path.join(self.root, *parts)
                if os.path.isfile(full) and os.path.getsize(full) <= self.max_bytes:
                    files[str(f)] = _text(Path(full).read_bytes())
        yield LicenseEvidence(self.repo, files, meta)


def default_sources(*, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Source]:
    """The running interpreter's standard library (repo "cpython-stdlib", site-packages excluded) and
    every distribution installed in its site-packages, sorted by name; a file listed by several
    distributions goes to the first."""
    paths = sysconfig.get_paths()
    sources: list[Source] = [
        DirectorySource(paths["stdlib"], repo="cpython-stdlib", source="stdlib", max_bytes=max_bytes)
    ]
    site_dirs = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
    site_dirs = {os.path.realpath(d) for d in site_dirs if os.path.isdir(d)}
    found = {}
    for dist in importlib_metadata.distributions():  # sys.path order: the copy Python imports comes first
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()  # PEP 503 name
        if key and key not in found and os.path.realpath(str(dist.locate_file(""))) in site_dirs:
            found[key] = dist
    claimed: set[tuple[str, str]] = set()
    for key in sorted(found):
        dist = found[key]
        root = os.path.realpath(str(dist.locate_file("")))
        own = [p for p in _dist_paths(dist) if (root, p) not in claimed]
        claimed.update((root, p) for p in own)
        if own:
            sources.append(DistributionSource(dist, paths=own, max_bytes=max_bytes))
    return sources
