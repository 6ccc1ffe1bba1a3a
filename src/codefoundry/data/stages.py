"""The per-document stages of `data build`, run by a worker on one chunk of files: language id (binary,
encoding, generated files), licence audit, quality filters, secrets/PII redaction, decontamination, and
the dedup keys (content hash, MinHash signature) the driver deduplicates with.

A chunk's results are three files in the work directory, written under temporary names and renamed, the
JSON last: `chunk_N.parquet` (the surviving documents), `chunk_N.npz` (their dedup keys) and `chunk_N.json`
(stage counts, the ids and sizes, and every drop with its reason). A chunk counts as done only when its
JSON exists, so a worker killed half-way leaves nothing that a resumed run would trust."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codefoundry.data.document import Document, StageCounts

if TYPE_CHECKING:
    from codefoundry.data.pipeline import BuildConfig

STAGE_NAMES = ("source", "language", "license", "quality", "secrets", "decontam", "exact_dedup", "near_dedup")
WORKER_STAGES = ("language", "license", "quality", "secrets", "decontam")


@dataclass(frozen=True)
class ChunkTask:
    index: int
    files: list  # (SourceFile, repo licence expression) pairs
    work: str
    config: BuildConfig

    @property
    def stamp(self) -> str:
        """What the chunk was made from (ids, sizes, licences): a resumed run redoes a chunk whose inputs
        changed even when the run's fingerprint did not (a file edited in place)."""
        lines = "\n".join(f"{f.id}\t{f.size}\t{f.license}\t{lic}" for f, lic in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()


class _Stages:
    """Everything a worker builds once per config: stage configs, the contamination index, the hasher."""

    def __init__(self, config: BuildConfig) -> None:
        from codefoundry.data.decontam import ContaminationIndex, DecontamConfig
        from codefoundry.data.dedup import DedupConfig, MinHasher
        from codefoundry.data.filters import FilterConfig
        from codefoundry.data.langid import LangConfig
        from codefoundry.data.licenses import LicenseConfig
        from codefoundry.data.pipeline import filter_options
        from codefoundry.data.secrets import SecretsConfig

        self.config = config
        self.lang = LangConfig(languages=config.languages or None)
        license_options = {"allow": config.licenses} if config.licenses else {}
        self.licenses = LicenseConfig(keep_unknown=config.keep_unknown_license, **license_options)
        self.filters = FilterConfig(**filter_options(config))
        self.secrets = SecretsConfig()
        self.decontam = None
        if config.decontaminate or config.decontam_files:
            dc = DecontamConfig(ngram=config.decontam_ngram, benchmarks=config.decontaminate,
                                extra_files=config.decontam_files)  # fmt: skip
            self.decontam = ContaminationIndex.from_config(dc)
        self.hasher = MinHasher(DedupConfig(num_perm=config.num_perm, shingle_size=config.shingle_size,
                                            threshold=config.dedup_threshold, seed=config.seed))  # fmt: skip


_CACHE: dict[str, _Stages] = {}


def _stages_for(config: BuildConfig) -> _Stages:
    key = repr(config)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _Stages(config)
    return _CACHE[key]


def _drop(
    counts: StageCounts, drops: list[dict[str, str]], doc_id: str, reason: str, detail: str = ""
) -> None:
    counts.dropped[reason] += 1
    drops.append(
        {"id": doc_id, "stage": counts.name, "reason": reason, **({"detail": detail} if detail else {})}
    )


def _enter(counts: StageCounts, n_bytes: int) -> None:
    counts.docs_in += 1
    counts.bytes_in += n_bytes


def _leave(counts: StageCounts, n_bytes: int) -> None:
    counts.docs_out += 1
    counts.bytes_out += n_bytes


def _one(
    st: _Stages, item: Any, repo_license: str, c: dict[str, StageCounts], drops: list
) -> Document | None:
    """One file through every per-document stage; None when a stage drops it (recorded in `drops`)."""
    from codefoundry.data.decontam import contaminated_by
    from codefoundry.data.filters import check
    from codefoundry.data.langid import decode_text, identify
    from codefoundry.data.licenses import allowed, file_license
    from codefoundry.data.secrets import redact_document

    data = item.read()
    _enter(c["language"], len(data))
    text = decode_text(data)
    language, reason = identify(item.path, data, text, st.lang)
    if reason:
        return _drop(c["language"], drops, item.id, reason)
    size = len(data)
    _leave(c["language"], size)

    _enter(c["license"], size)
    licence = file_license(text, item.license or repo_license)
    if not allowed(licence, st.licenses):
        return _drop(c["license"], drops, item.id, f"license:{licence}")
    _leave(c["license"], size)

    _enter(c["quality"], size)
    if reason := check(text, language, st.filters):
        return _drop(c["quality"], drops, item.id, reason)
    _leave(c["quality"], size)

    doc = Document(id=item.id, text=text, repo=item.repo, path=item.path, source=item.source,
                   language=language, license=licence)  # fmt: skip
    _enter(c["secrets"], size)
    if st.config.redact and (found := redact_document(doc, config=st.secrets)):
        c["secrets"].changed.update(found)
        size = len(doc.text.encode("utf-8"))
    _leave(c["secrets"], size)

    _enter(c["decontam"], size)
    if st.decontam is not None and (hit := contaminated_by(st.decontam, doc.text)):
        return _drop(c["decontam"], drops, item.id, f"contaminated:{hit}")
    _leave(c["decontam"], size)
    return doc


def process_chunk(task: ChunkTask) -> int:
    """Run one chunk through the per-document stages and write its three files; returns its index."""
    from codefoundry.data.dedup import content_hash
    from codefoundry.data.output import write_documents
    from codefoundry.data.sources import SourceError

    st = _stages_for(task.config)
    counts = {name: StageCounts(name) for name in WORKER_STAGES}
    drops: list[dict[str, str]] = []
    kept: list[Document] = []
    for item, repo_license in task.files:
        try:
            doc = _one(st, item, repo_license, counts, drops)
        except SourceError as e:  # vanished or unreadable since enumeration: a drop, not a crash
            counts["language"].docs_in += 1
            doc = _drop(counts["language"], drops, item.id, "unreadable", str(e))
        if doc is not None:
            kept.append(doc)
    signatures = st.hasher.signatures([d.text for d in kept])
    hashes = np.array([content_hash(d.text) for d in kept], dtype="S32")
    base = Path(task.work) / f"chunk_{task.index:06d}"
    write_documents(base.with_suffix(".parquet"), kept)
    tmp = base.with_name(base.name + ".tmp.npz")
    np.savez(tmp, signatures=signatures, hashes=hashes)
    os.replace(tmp, base.with_suffix(".npz"))
    record = {"index": task.index, "stamp": task.stamp, "ids": [d.id for d in kept],
              "sizes": [len(d.text.encode("utf-8")) for d in kept],
              "counts": [counts[n].as_dict() for n in WORKER_STAGES], "drops": drops}  # fmt: skip
    tmp = base.with_name(base.name + ".json.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, base.with_suffix(".json"))
    return task.index


def ray_process_row(row: dict[str, Any]) -> dict[str, Any]:
    """The Ray Data map function: one row holds one pickled ChunkTask."""
    import pickle

    return {"index": process_chunk(pickle.loads(row["task"]))}


def chunk_done(task: ChunkTask) -> bool:
    """Whether a finished chunk from the same inputs is already in the work directory."""
    path = Path(task.work) / f"chunk_{task.index:06d}.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("stamp") == task.stamp
    except (json.JSONDecodeError, OSError):
        return False


def load_chunk_keys(work: Path, index: int) -> dict[str, Any]:
    base = work / f"chunk_{index:06d}"
    record = json.loads(base.with_suffix(".json").read_text())
    with np.load(base.with_suffix(".npz")) as keys:
        signatures, hashes = keys["signatures"], keys["hashes"]
    counts = {}
    for c in record["counts"]:
        sc = StageCounts(c["name"], c["docs_in"], c["docs_out"], c["bytes_in"], c["bytes_out"])
        sc.dropped.update(c["dropped"])
        sc.changed.update(c["changed"])
        counts[c["name"]] = sc
    return {"ids": record["ids"], "sizes": record["sizes"], "hashes": [bytes(h) for h in hashes],
            "signatures": signatures, "counts": counts, "drops": record["drops"]}  # fmt: skip


def chunk_documents(work: Path, index: int) -> Iterator[Document]:
    from codefoundry.data.output import read_documents

    yield from read_documents(work / f"chunk_{index:06d}.parquet")
