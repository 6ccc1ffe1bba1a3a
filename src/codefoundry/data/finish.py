"""The driver's half of `data build`, after every chunk is processed: exact then near deduplication over
the dedup keys of all documents, then one ordered pass over the chunk files that writes the documents
(file-level, or repository-level in import order) as Parquet shards, then the tokenizer and the token
shards for pretraining.

Dedup keeps, in every group of duplicates, the document that comes first in input order (sources as
given, files sorted by path), so the choice is stable across runs, backends and worker counts."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codefoundry.data.document import Document, StageCounts
from codefoundry.data.output import ShardWriter, read_documents, sha256_file

if TYPE_CHECKING:
    from codefoundry.data.pipeline import BuildConfig


def dedup(config: BuildConfig, keys: dict[str, Any], counts: dict[str, StageCounts]) -> dict[int, str]:
    """Global index → why it is dropped: `exact_duplicate of ID` or `near_duplicate of ID` (the kept one)."""
    from codefoundry.data.dedup import DedupConfig, deduplicate_keys

    ids, sizes = keys["ids"], keys["sizes"]
    dcfg = DedupConfig(num_perm=config.num_perm, shingle_size=config.shingle_size, threshold=config.dedup_threshold,
                       bands=config.dedup_bands or None, seed=config.seed)  # fmt: skip
    result = deduplicate_keys(keys["hashes"], keys["signatures"], dcfg)
    dropped = {d.index: f"{d.reason} of {ids[d.kept]}" for d in result.duplicates}
    stage_in = (len(ids), sum(sizes))
    for name in ("exact_dedup", "near_dedup"):
        c = counts[name]
        c.docs_in, c.bytes_in = stage_in
        gone = [d.index for d in result.duplicates if d.reason == f"{name.split('_')[0]}_duplicate"]
        if gone:
            c.dropped[f"{name.split('_')[0]}_duplicate"] = len(gone)
        c.docs_out, c.bytes_out = c.docs_in - len(gone), c.bytes_in - sum(sizes[i] for i in gone)
        stage_in = (c.docs_out, c.bytes_out)
    keys["clusters"] = {"exact_duplicate_groups": len(result.exact_clusters),
                        "near_duplicate_clusters": len(result.near_clusters),
                        "largest_cluster": max((len(c) for c in result.near_clusters), default=0)}  # fmt: skip
    return dropped


def kept_documents(keys: dict[str, Any], work: Path, dropped: dict[int, str]) -> Iterator[Document]:
    """The surviving documents in input order, streamed from the chunk files."""
    from codefoundry.data.stages import chunk_documents

    index = 0
    for chunk in range(keys["n_chunks"]):
        for doc in chunk_documents(work, chunk):
            if index not in dropped:
                yield doc
            index += 1


def repo_documents(docs: Iterator[Document]) -> Iterator[Document]:
    """One document per repository (consecutive files of one repo), its files in import order. The text
    carries the markers as strings; `meta["pieces"]` gives where each marker starts, so the token shards
    put real special-token ids there and file contents can never forge one."""
    from codefoundry.data.packing import RepoFile, repo_pieces

    def flush(repo: str, group: list[Document]) -> Document:
        files = [RepoFile(d.path, d.text, d.language) for d in group]
        pieces = repo_pieces(repo, files)
        starts, text = [], []
        offset = 0
        for special, body in pieces:
            starts.append([special, offset])
            chunk = special + body
            text.append(chunk)
            offset += len(chunk)
        by_path = {d.path: d for d in group}
        order = [body.split("\n", 1)[0] for special, body in pieces[1:]]
        meta = {"files": order, "pieces": starts,
                "licenses": sorted({by_path[p].license for p in order}),
                "languages": sorted({by_path[p].language for p in order})}  # fmt: skip
        licence = " AND ".join(meta["licenses"]) if len(meta["licenses"]) > 1 else meta["licenses"][0]
        return Document(id=repo, text="".join(text), repo=repo, path="", source=group[0].source,
                        language=",".join(meta["languages"]), license=licence, meta=meta)  # fmt: skip

    group: list[Document] = []
    for doc in docs:
        if group and doc.repo != group[0].repo:
            yield flush(group[0].repo, group)
            group = []
        group.append(doc)
    if group:
        yield flush(group[0].repo, group)


def pieces_of(doc: Document) -> list[tuple[str, str]]:
    """The (special token, text) pieces of a repository-level document, from `meta["pieces"]`."""
    starts = doc.meta["pieces"]
    ends = [s for _, s in starts[1:]] + [len(doc.text)]
    return [
        (special, doc.text[start + len(special) : end])
        for (special, start), end in zip(starts, ends, strict=True)
    ]


def write_outputs(
    config: BuildConfig, docs: Iterator[Document], out: Path, fmt: StageCounts
) -> dict[str, Any]:
    """Parquet shards of the final documents, with language and licence tallies."""
    writer = ShardWriter(out / "documents", rows=config.shard_rows)
    languages: Counter[str] = Counter()
    licenses: Counter[str] = Counter()
    for doc in docs:
        n_bytes = len(doc.text.encode("utf-8"))
        fmt.docs_out += 1
        fmt.bytes_out += n_bytes
        if config.layout == "file":
            languages[doc.language] += 1
            licenses[doc.license] += 1
        else:
            languages.update(doc.meta["languages"])
            licenses.update(doc.meta["licenses"])
        writer.add(doc)
    paths = writer.close()
    return {"documents": [{"path": str(p.relative_to(out)), "sha256": sha256_file(p)} for p in paths],
            "languages": dict(languages.most_common()), "licenses": dict(licenses.most_common())}  # fmt: skip


def output_documents(out: Path) -> Iterator[Document]:
    for path in sorted((out / "documents").glob("part-*.parquet")):
        yield from read_documents(path)


def token_shards(config: BuildConfig, out: Path, *, progress: bool = False) -> dict[str, Any]:
    """The tokenizer (given, or trained on at most `tokenizer_sample_mb` of the output documents) and
    the token shards of every output document."""
    from codefoundry.data.packing import encode_pieces
    from codefoundry.data.shards import write_shards
    from codefoundry.models import tokenizer as T

    started = time.time()
    tok_dir = out / "tokenizer"
    if config.tokenizer:
        tok = T.load(config.tokenizer)
        T.save(tok, tok_dir)
    else:
        tok = T.train_texts(_sample_texts(out, config.tokenizer_sample_mb << 20), vocab_size=config.vocab_size,
                            out=tok_dir)  # fmt: skip
    trained = time.time()
    plain = T.plain_text_copy(tok)

    def docs() -> Iterator[str | list[int]]:
        from tqdm import tqdm

        for doc in tqdm(
            output_documents(out), desc="tokenizing", unit="doc", disable=not progress, leave=False
        ):
            yield encode_pieces(plain, pieces_of(doc)) if config.layout == "repo" else doc.text

    tokens_dir = out / "tokens"
    for old in tokens_dir.glob("shard_*.npy"):
        old.unlink()
    paths = write_shards(docs(), tokens_dir, tok, shard_tokens=config.shard_tokens)
    shards = []
    for p in paths:
        n = int(np.load(p, mmap_mode="r").shape[0])
        shards.append({"path": str(p.relative_to(out)), "tokens": n, "sha256": sha256_file(p)})
    timings = {"tokenizer": round(trained - started, 2), "tokenize": round(time.time() - trained, 2)}
    return {"tokenizer": str(tok_dir.relative_to(out)), "vocab_size": tok.get_vocab_size(), "tokens": shards,
            "_timings": timings,
            "total_tokens": sum(s["tokens"] for s in shards)}  # fmt: skip


def _sample_texts(out: Path, budget: int) -> Iterator[str]:
    used = 0
    for doc in output_documents(out):
        if used >= budget:
            return
        used += len(doc.text)
        yield doc.text


def finish(config: BuildConfig, keys: dict[str, Any], counts: dict[str, StageCounts], work: Path, *,
           drops: list[dict[str, str]], progress: bool) -> dict[str, Any]:  # fmt: skip
    """Dedup, output, tokens; returns the manifest's body."""
    from tqdm import tqdm

    out = work.parent
    t0 = time.time()
    dropped = dedup(config, keys, counts)
    t1 = time.time()
    fmt = StageCounts("format")
    fmt.docs_in = counts["near_dedup"].docs_out
    fmt.bytes_in = counts["near_dedup"].bytes_out
    docs = kept_documents(keys, work, dropped)
    if config.layout == "repo":
        docs = repo_documents(docs)
    docs = tqdm(docs, desc="writing", unit="doc", disable=not progress, leave=False)
    for old in (out / "documents").glob("part-*.parquet"):
        old.unlink()
    outputs = write_outputs(config, docs, out, fmt)
    t2 = time.time()
    outputs.update(token_shards(config, out, progress=progress))
    outputs["timings_s"] = {"dedup": round(t1 - t0, 2), "write": round(t2 - t1, 2), **outputs.pop("_timings")}
    drops = drops + [
        {"id": keys["ids"][i], "stage": r.split(" ", 1)[0], "reason": r} for i, r in sorted(dropped.items())
    ]
    _write_jsonl(out / "dropped.jsonl", drops)
    return {**outputs, "dedup": keys["clusters"], "stages": [c.as_dict() for c in counts.values()] + [fmt.as_dict()],
            "_extra_stages": [fmt]}  # fmt: skip


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
