"""Token shards for pretraining: 1-D `.npy` arrays of token ids with every document ended by
`<|endoftext|>`, the format `codefoundry.train.data.PretrainData` opens memory-mapped.

Text is encoded with special-token strings treated as plain text, so a source file that contains the
literal string `<|endoftext|>` does not forge a document boundary. Documents that need real special
tokens (repository-level documents with `<|repo_name|>` / `<|file_sep|>`) are passed as token ids."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from codefoundry.models.tokenizer import EOT, plain_text_copy, special_id

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENCODE_CHUNK = 256  # documents per encode_batch call


def encode_each(tokenizer: Tokenizer, texts: Sequence[str], eot: int) -> Iterator[np.ndarray]:
    """Each text's ids followed by `eot` (int64); `tokenizer` should be a `plain_text_copy`."""
    for lo in range(0, len(texts), ENCODE_CHUNK):
        for enc in tokenizer.encode_batch(list(texts[lo : lo + ENCODE_CHUNK]), add_special_tokens=False):
            yield np.asarray(enc.ids + [eot], dtype=np.int64)


def write_shards(
    documents: Iterable[str | Sequence[int] | np.ndarray],
    out_dir: str | Path,
    tokenizer: Tokenizer,
    *,
    shard_tokens: int,
) -> list[Path]:
    """Write documents (texts, or token-id sequences) as `shard_00000.npy`, ... in `out_dir`, each document
    followed by `<|endoftext|>`. A shard is closed at the first document end at or past `shard_tokens`
    tokens, so documents never span shards. uint16 when the vocabulary fits, else uint32. The tokenizer
    is saved beside them as `tokenizer.json` (for provenance; readers use the tokenizer they are given)."""
    if shard_tokens < 1:
        raise ValueError(f"write_shards: shard_tokens must be >= 1, got {shard_tokens}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, eot = tokenizer.get_vocab_size(), special_id(tokenizer, EOT, "write_shards")
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    plain = plain_text_copy(tokenizer)
    paths: list[Path] = []
    pending: list[np.ndarray] = []
    n_pending = 0
    for batch in _batched(documents, ENCODE_CHUNK):
        encoded = encode_each(plain, [d for d in batch if isinstance(d, str)], eot)
        for doc in batch:
            ids = next(encoded) if isinstance(doc, str) else np.append(np.asarray(doc, dtype=np.int64), eot)
            if ids.min() < 0 or ids.max() >= vocab:
                raise ValueError(f"write_shards: a token-id document has ids outside [0, {vocab})")
            pending.append(ids)
            n_pending += len(ids)
            if n_pending >= shard_tokens:
                paths.append(_save_shard(out / f"shard_{len(paths):05d}.npy", pending, dtype))
                pending, n_pending = [], 0
    if pending:
        paths.append(_save_shard(out / f"shard_{len(paths):05d}.npy", pending, dtype))
    tokenizer.save(str(out / "tokenizer.json"))
    return paths


def _save_shard(path: Path, docs: list[np.ndarray], dtype: type) -> Path:
    np.save(path, np.concatenate(docs).astype(dtype))
    return path


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
