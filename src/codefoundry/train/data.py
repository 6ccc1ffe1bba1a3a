"""The pretraining data path: a token stream, random training windows with fill-in-the-middle, a
held-out split and the unigram baseline a model has to beat.

Two kinds of source:

- a directory of source files, tokenized when the data is opened (read whole into memory: fine for the
  standard library or a small repository; write large corpora once with
  `codefoundry.data.shards.write_shards` or `codefoundry data build`);
- token shards: one `.npy` file or a directory of them, 1-D uint16/uint32 token ids with documents ended
  by `<|endoftext|>`, opened memory-mapped and never read whole into memory (opening scans them once in
  chunks to check the ids against the tokenizer and to count tokens for the unigram baseline).

Training windows are nanoGPT-style: random offsets into the training stream, drawn from a generator
seeded by (seed, step, micro, rank), so a batch is a pure function of its arguments: resuming at a step
reproduces the data and ranks never share a batch. Windows cross document boundaries (the model sees
`<|endoftext|>` between documents). FIM is applied per document piece inside a window (context-level
FIM, as in BigCode's Megatron `permute`), in PSM or SPM order; in a repository-level document per file:
the markers and paths stay as they are and each file's text is a piece (`train.repo_sections`), so a
window that crosses a `<|file_sep|>` still gets FIM, at the rate a file layout gets. Every FIM middle
ends inside its row and is followed by `<|endoftext|>` (where `completion.complete` stops a middle), also
when the window cut the document or another file of its repository follows: the piece's suffix gives up
its far end (then its prefix its head) to make room: cut at the row's end instead, a middle would almost
never end in training, and a model would not learn to stop one. A `fim_line_rate` share of FIM pieces
is split at line starts, so the middle is whole lines, as when an editor asks for a body or a block.

Document text is encoded with special-token strings treated as plain text, so a source file that
contains the literal string `<|endoftext|>` does not forge a document boundary.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from codefoundry.data.shards import encode_each
from codefoundry.models.tokenizer import (
    EOT,
    FILE_SEP,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    REPO_NAME,
    SPECIAL_TOKENS,
    corpus_files,
    read_source,
    special_id,
)
from codefoundry.train.repo_sections import LOOK_BACK, RepoSections

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SCAN_CHUNK = 1 << 22  # tokens per chunk when scanning shards (16 MiB of uint32)
NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts


@dataclass(frozen=True)
class DataConfig:
    source: str  # a directory of source files, or a .npy token shard / a directory of them
    seq_len: int = 512
    fim_rate: float = 0.5  # probability that a document piece is turned into a FIM example
    spm_rate: float = 0.5  # among FIM examples, the fraction in SPM order (the rest PSM)
    fim_line_rate: float = 0.5  # among FIM examples, the fraction split at line starts (the rest anywhere)
    holdout: float = 0.02  # fraction of documents held out for validation
    seed: int = 0
    suffixes: tuple[str, ...] = (".py",)

    def __post_init__(self) -> None:
        # YAML and the command line give a list or a single string; a bare ".py" is not a tuple of letters
        suffixes = (self.suffixes,) if isinstance(self.suffixes, str) else tuple(self.suffixes)
        object.__setattr__(self, "suffixes", suffixes)
        checks = {
            "seq_len": self.seq_len >= 1,
            "fim_rate": 0.0 <= self.fim_rate <= 1.0,
            "spm_rate": 0.0 <= self.spm_rate <= 1.0,
            "fim_line_rate": 0.0 <= self.fim_line_rate <= 1.0,
            "holdout": 0.0 <= self.holdout < 1.0,
            "seed": self.seed >= 0,
            "suffixes": len(self.suffixes) > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"DataConfig.{name}: invalid value {getattr(self, name)!r}")


class TokenStream:
    """Token arrays (numpy arrays or memmaps, uint16/uint32) read as one stream; never copied whole."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.ends = np.cumsum([len(p) for p in self.parts], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as int64, crossing part boundaries."""
        if start < 0 or start + n > len(self):
            raise IndexError(
                f"TokenStream.read: [{start}, {start + n}) outside a stream of {len(self)} tokens"
            )
        out = np.empty(n, dtype=np.int64)
        i, filled = int(np.searchsorted(self.ends, start, side="right")), 0
        while filled < n:
            part_start = int(self.ends[i] - len(self.parts[i]))
            lo = start + filled - part_start
            take = min(n - filled, len(self.parts[i]) - lo)
            out[filled : filled + take] = self.parts[i][lo : lo + take]
            filled, i = filled + take, i + 1
        return out

    def chunks(self, size: int = SCAN_CHUNK) -> Iterator[np.ndarray]:
        for part in self.parts:
            for lo in range(0, len(part), size):
                yield part[lo : lo + size]

    def counts(self, vocab_size: int, where: str) -> np.ndarray:
        """(vocab_size,) int64 occurrences of each id; a ValueError naming `where` on an id >= vocab_size."""
        total = np.zeros(vocab_size, np.int64)
        for chunk in self.chunks():
            total += _bincount(chunk, vocab_size, where)
        return total


def _bincount(ids: np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    counts = np.bincount(ids, minlength=vocab_size)
    if len(counts) > vocab_size:
        raise ValueError(
            f"{where}: token id {len(counts) - 1} >= the tokenizer's vocabulary size {vocab_size}"
            " (shards written with another tokenizer?)"
        )
    return counts.astype(np.int64, copy=False)


def plain_text_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that encodes special-token strings found in text as ordinary text."""
    from codefoundry.models.tokenizer import plain_text_copy

    return plain_text_copy(tokenizer)


def fim_split(text: str, rng: np.random.Generator, *, lines: bool = False) -> tuple[str, str, str]:
    """(prefix, middle, suffix) at two character positions drawn uniformly in [0, len] and sorted; with
    `lines`, drawn uniformly among the starts of lines and the end (lines end where Python's end: "\n",
    "\r\n" or "\r"), so the middle is whole lines, as when an editor asks for a body or a block."""
    if not lines:
        a, b = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
        return text[:a], text[a:b], text[b:]
    # Each position once: the end was also listed as the start after a final "\n" (nearly every file),
    # so an empty suffix came twice as often as any other cut; a "\r"-only file had no line starts at all.
    starts = [0, *itertools.accumulate(len(line) for line in io.StringIO(text, newline=""))]
    a, b = sorted(starts[int(x)] for x in rng.integers(0, len(starts), size=2))
    return text[:a], text[a:b], text[b:]


def fim_layout(
    prefix: Sequence[int],
    middle: Sequence[int],
    suffix: Sequence[int],
    sentinels: tuple[int, int, int],
    *,
    spm: bool,
) -> list[int]:
    """PSM `<|fim_prefix|> P <|fim_suffix|> S <|fim_middle|> M`, or SPM
    `<|fim_prefix|> <|fim_suffix|> S <|fim_middle|> P M` (prefix and middle contiguous, as in
    StarCoder/Qwen2.5-Coder). `sentinels` = the (fim_prefix, fim_middle, fim_suffix) ids."""
    pre, mid, suf = sentinels
    if spm:
        return [pre, suf, *suffix, mid, *prefix, *middle]
    return [pre, *prefix, suf, *suffix, mid, *middle]


def fim_sentinels(tokenizer: Tokenizer, why: str = "FIM") -> tuple[int, int, int]:
    """The (fim_prefix, fim_middle, fim_suffix) ids; a clear error when the tokenizer lacks them."""
    prefix, middle, suffix = (special_id(tokenizer, t, why) for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX))
    return prefix, middle, suffix


def fim_example(text: str, tokenizer: Tokenizer, rng: np.random.Generator, *, spm: bool) -> list[int]:
    """One document's FIM tokens: `fim_split` cuts it into prefix, middle and suffix, each part is encoded
    separately (as a prompt is at inference) and laid out by `fim_layout`. Pass a `plain_text_tokenizer`
    so special-token strings inside the text stay text. `PretrainData.batch` does the same with one
    `encode_batch` call for all the pieces of a batch."""
    parts = fim_split(text, rng)
    prefix, middle, suffix = (tokenizer.encode(part, add_special_tokens=False).ids for part in parts)
    return fim_layout(prefix, middle, suffix, fim_sentinels(tokenizer), spm=spm)


@dataclass
class _Split:
    train: TokenStream
    val: TokenStream
    train_counts: np.ndarray  # (vocab,) int64
    val_counts: np.ndarray  # (vocab,) int64
    n_documents: int
    n_skipped: int  # source files skipped as not UTF-8
    val_texts: list[str] | None  # None: decode them from the held-out stream


def _open_source(cfg: DataConfig, plain: Tokenizer, vocab: int, eot: int) -> _Split:
    path = Path(cfg.source)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".npy":
            raise ValueError(f"{path}: a data source is a directory or a .npy token shard, not this file")
        return _open_shards([path], vocab, eot, cfg.holdout)
    shards = sorted(path.glob("*.npy"))
    if shards:
        return _open_shards(shards, vocab, eot, cfg.holdout)
    files = corpus_files(path, suffixes=cfg.suffixes)
    if not files:
        raise ValueError(f"{path}: no *.npy token shards and no source files with suffixes {cfg.suffixes}")
    return _open_directory(path, files, plain, vocab, eot, cfg.holdout)


def holdout_score(relative_path: str) -> float:
    """A stable uniform number in [0, 1) for a file (blake2b of its relative path, not Python's salted
    `hash`), so the held-out set is the same in every process and whatever the file order."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _open_directory(
    root: Path, files: list[Path], plain: Tokenizer, vocab: int, eot: int, holdout: float
) -> _Split:
    docs: list[tuple[str, str]] = []  # (relative path, text)
    skipped = 0
    for f in files:
        try:
            text = read_source(f)  # line ends as the file has them
        except UnicodeDecodeError:
            skipped += 1
            continue
        except OSError as e:
            raise ValueError(f"{f}: cannot read ({e.strerror})")
        if text:
            docs.append((f.relative_to(root).as_posix(), text))
    if not docs:
        raise ValueError(f"{root}: no non-empty UTF-8 source files ({skipped} skipped as not UTF-8)")
    scores = [holdout_score(rel) for rel, _ in docs]
    # a lone file is never held out (as a lone document in shards): held out, nothing was left to train on
    held = [s < holdout and len(docs) > 1 for s in scores]
    if holdout > 0 and len(docs) > 1:
        # at least one held-out file and at least one training file
        if not any(held):
            held[int(np.argmin(scores))] = True
        if all(held):
            held[int(np.argmax(scores))] = False
    val_texts = [t for (_, t), h in zip(docs, held, strict=True) if h]
    streams = []
    for texts in ([t for (_, t), h in zip(docs, held, strict=True) if not h], val_texts):
        # uint32 per document: int64 documents, their int64 concatenation and its uint32 copy peaked at
        # ~20 bytes a token (8 now)
        arrays = [ids.astype(np.uint32) for ids in encode_each(plain, texts, eot)]
        streams.append(np.concatenate(arrays) if arrays else np.zeros(0, np.uint32))
    train, val = streams
    return _Split(
        TokenStream([train]),
        TokenStream([val]),
        _bincount(train, vocab, str(root)),
        _bincount(val, vocab, str(root)),
        len(docs),
        skipped,
        val_texts,
    )


def open_shard(path: Path) -> np.memmap:
    """A token shard, memory-mapped read-only; a clear error for anything but a 1-D uint16/uint32 array."""
    # Without numpy's magic string np.load reads the file as a pickle: an empty file raised a bare
    # EOFError naming no file, and other files got numpy's advice to unpickle them (`allow_pickle=`).
    try:
        with path.open("rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})")
    if magic != NPY_MAGIC:
        raise ValueError(f"{path}: not a .npy file (no numpy header: empty, cut short or another format)")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})")
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"{path}: a shard must be a 1-D uint16 or uint32 array of token ids")
    return arr


def _open_shards(paths: list[Path], vocab: int, eot: int, holdout: float) -> _Split:
    named = [(p, a) for p in paths if len(a := open_shard(p))]  # empty shards add nothing
    if not named:
        raise ValueError(
            f"{paths[0] if len(paths) == 1 else paths[0].parent}: the token shards hold no tokens"
        )
    arrays = [a for _, a in named]
    # one chunked pass per shard: checks every id against the vocabulary and counts documents and tokens
    counts = [TokenStream([a]).counts(vocab, str(p)) for p, a in named]
    docs = [int(c[eot]) + int(a[-1] != eot) for a, c in zip(arrays, counts, strict=True)]
    total = sum(docs)
    # Held out: the last `holdout` of all the documents (at least one, and one kept for training), taken
    # from the end of the stream across shards. A fraction of the last shard's alone made the held-out
    # set as small as a data build's remainder shard, one short document at worst, whatever `holdout`.
    left = min(total - 1, max(1, round(holdout * total))) if holdout > 0 and total > 1 else 0
    train, val = list(arrays), []
    while left:
        part, n = train.pop(), docs[len(train)]
        cut = 0 if n <= left else _after_nth_eot(part, n - left, eot)
        train += [part[:cut]] if cut else []
        val.insert(0, part[cut:])
        left -= min(n, left)
    val_counts = TokenStream(val).counts(vocab, str(named[-1][0]))
    return _Split(TokenStream(train), TokenStream(val), sum(counts) - val_counts, val_counts, total, 0, None)


def _after_nth_eot(arr: np.ndarray, n: int, eot: int) -> int:
    """The index just after the n-th (1-based) `eot` in `arr`; 0 for n == 0."""
    if n == 0:
        return 0
    seen = 0
    for lo in range(0, len(arr), SCAN_CHUNK):
        hits = np.flatnonzero(arr[lo : lo + SCAN_CHUNK] == eot)
        if seen + len(hits) >= n:
            return lo + int(hits[n - seen - 1]) + 1
        seen += len(hits)
    return len(arr)


@dataclass(frozen=True)
class _Fim:
    """A document piece planned as FIM: its (prefix, middle, suffix) text still to be encoded, and the
    tokens at the window edges kept as they are (they hold a cut multi-byte character): `lead` joins
    the prefix, `trail` the suffix."""

    lead: list[int]
    parts: tuple[str, str, str]
    trail: list[int]
    spm: bool
    keep: float  # the share of its context a piece the window cut keeps (PretrainData._fim_fitted)
    then_file: bool = False  # a repository's next file follows in the window: the middle gets its own EOT


class PretrainData:
    """Training windows (with FIM) and held-out windows over a `DataConfig.source`; see the module doc."""

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, *, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"PretrainData: rank {rank} outside [0, world_size={world_size})")
        self.cfg, self.tokenizer, self.rank, self.world_size = cfg, tokenizer, rank, world_size
        self.vocab_size = tokenizer.get_vocab_size()
        self._eot = special_id(tokenizer, EOT, "pretraining data")
        self._sentinels = (
            fim_sentinels(tokenizer, f"fim_rate={cfg.fim_rate} (set fim_rate=0 to train without FIM)")
            if cfg.fim_rate > 0
            else (-1, -1, -1)
        )
        # special ids inside a piece would not survive decode -> encode, so such pieces are left as they are
        self._specials = np.array([i for t in SPECIAL_TOKENS if (i := tokenizer.token_to_id(t)) is not None])
        self._plain = plain_text_tokenizer(tokenizer)
        split = _open_source(cfg, self._plain, self.vocab_size, self._eot)
        self.train, self.val = split.train, split.val
        self._train_counts, self._val_counts, self._val_texts = (
            split.train_counts,
            split.val_counts,
            split.val_texts,
        )
        self.n_train_tokens, self.n_val_tokens = len(self.train), len(self.val)
        self.n_documents, self.n_skipped = split.n_documents, split.n_skipped
        if self.n_train_tokens < cfg.seq_len + 1:
            raise ValueError(
                f"{cfg.source}: the training stream has {self.n_train_tokens} tokens,"
                f" fewer than seq_len + 1 = {cfg.seq_len + 1}"
            )
        # FIM usually lengthens a window (3 sentinels, pieces encoded apart); a little slack covers the
        # rare window that shrinks, and _assemble extends from the stream if even that is not enough
        self._slack = 16 + cfg.seq_len // 32 if cfg.fim_rate > 0 else 0
        markers = [i for t in (REPO_NAME, FILE_SEP) if (i := tokenizer.token_to_id(t)) is not None]
        has_repos = cfg.fim_rate > 0 and bool(self._train_counts[markers].any())
        self._repo = RepoSections(tokenizer, self._eot) if has_repos else None  # None: file documents

    def describe(self) -> str:
        return (
            f"{self.cfg.source}: {self.n_documents} documents ({self.n_skipped} skipped as not UTF-8),"
            f" {self.n_train_tokens} training tokens, {self.n_val_tokens} held-out tokens"
        )

    def batch(self, step: int, micro: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64; targets = inputs shifted by one.
        A pure function of (seed, step, micro, rank): the same arguments always give the same batch, so
        resuming at a step reproduces the data exactly and ranks never share a batch."""
        if step < 0 or micro < 0 or batch_size < 1:
            raise ValueError(
                "PretrainData.batch: need step >= 0, micro >= 0, batch_size >= 1;"
                f" got {step}, {micro}, {batch_size}"
            )
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([self.cfg.seed, step, micro, self.rank]))
        )
        need, n = self.cfg.seq_len + 1, self.n_train_tokens
        width = min(n, need + self._slack)
        starts = [int(rng.integers(0, n - width + 1)) for _ in range(batch_size)]
        windows = [self.train.read(s, width) for s in starts]
        if self.cfg.fim_rate == 0:
            rows = np.stack(windows)  # (B, T + 1)
        else:
            plans = [self._plan(w, rng, s) for w, s in zip(windows, starts, strict=True)]
            # every FIM part of the batch in one call (parallel in the tokenizer's Rust threads)
            texts = [t for plan in plans for seg in plan if isinstance(seg, _Fim) for t in seg.parts]
            encode = getattr(self._plain, "encode_batch_fast", self._plain.encode_batch)
            encoded = iter([e.ids for e in encode(texts, add_special_tokens=False)] if texts else [])
            rows = np.stack(
                [self._assemble(p, encoded, s + width) for p, s in zip(plans, starts, strict=True)]
            )
        x = torch.from_numpy(rows)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def _plan(self, window: np.ndarray, rng: np.random.Generator, start: int) -> list[list[int] | _Fim]:
        """Split a window (from stream position `start`) at EOT ids into document pieces (EOTs kept), and
        a repository-level piece into headers (kept) and files' texts; each document piece or file text
        becomes FIM with probability fim_rate. Returns plain token lists and `_Fim` parts to encode."""
        plan: list[list[int] | _Fim] = []
        lo = 0
        for hi in [*np.flatnonzero(window == self._eot).tolist(), len(window)]:
            piece = window[lo:hi]
            if self._repo is None:
                sections = [(piece[:0], piece)]
            else:  # a window that starts in a path must not rearrange the rest of that path
                back = self.train.read(max(0, start - LOOK_BACK), min(start, LOOK_BACK)) if lo == 0 else None
                sections = self._repo.split(piece, back is not None and self._repo.in_header(back))
            for j, (header, body) in enumerate(sections):
                plan += [header.tolist()] if len(header) else []
                use = len(body) and rng.random() < self.cfg.fim_rate
                fim = self._fim_piece(body, rng, then_file=j + 1 < len(sections)) if use else None
                plan.append(fim or body.tolist())
            if hi < len(window):
                plan.append([self._eot])
            lo = hi + 1
        return plan

    def _fim_piece(self, piece: np.ndarray, rng: np.random.Generator, *, then_file: bool) -> _Fim | None:
        if np.isin(piece, self._specials).any():
            return None  # special ids would not survive decode -> encode
        lead, trail, text = self._clean_text(piece)
        if not text:
            return None
        spm = bool(rng.random() < self.cfg.spm_rate)
        # drawn only when used: at rate 0 the generator's sequence is that of a config without it
        lines = self.cfg.fim_line_rate > 0 and bool(rng.random() < self.cfg.fim_line_rate)
        ids = piece.tolist()
        parts = fim_split(text, rng, lines=lines)
        return _Fim(ids[:lead], parts, ids[len(ids) - trail :], spm, float(rng.random()), then_file)

    def _assemble(
        self, plan: list[list[int] | _Fim], encoded: Iterator[list[int]], resume: int
    ) -> np.ndarray:
        """The planned row cut to seq_len + 1 tokens (int64); `resume` is where the window ended."""
        need, n = self.cfg.seq_len + 1, self.n_train_tokens
        ids: list[int] = []
        for k, seg in enumerate(plan):
            if isinstance(seg, _Fim):
                # edge tokens holding a cut character stay beside their text: before P, after S
                prefix, middle, suffix = seg.lead + next(encoded), next(encoded), next(encoded) + seg.trail
                cut = k + 1 == len(plan)  # else the document's EOT or the next file's header follows
                room = need - len(ids)
                keep = seg.keep if cut else None
                ids += self._fim_fitted(prefix, middle, suffix, seg.spm, room, keep, eot=cut or seg.then_file)
            else:
                ids += seg
        while len(ids) < need:  # rare: FIM came out shorter than the slack; continue with plain tokens
            resume %= n
            more = self.train.read(resume, min(need - len(ids), n - resume))
            ids += more.tolist()
            resume += len(more)
        return np.asarray(ids[:need], dtype=np.int64)

    def _fim_fitted(
        self,
        prefix: list[int],
        middle: list[int],
        suffix: list[int],
        spm: bool,
        room: int,
        keep: float | None,
        *,
        eot: bool,
    ) -> list[int]:
        """A FIM piece laid out so that its middle ends inside the row and is followed by <|endoftext|>,
        as at inference, where the middle must stop where the suffix takes over. `eot`: the EOT is
        added here (else the document's own comes next in the plan). `keep` None: the piece is whole
        (a repository's next file may follow). Else the window cut the piece (its document goes on):
        it gets its EOT here, and its context only the share `keep` of what fits, so that the rest of
        the row is plain text. Fitted to the row's end every time, the EOT would always sit at the row's
        last position, and a model learns to end middles by position (seen: p(EOT) 0.97 there, 0.07
        elsewhere). Context is cut from the suffix's far end, then from the prefix's head (a prompt is
        trimmed the same way); only a middle too long for the row on its own is cut, without its EOT."""
        over = len(prefix) + len(middle) + len(suffix) + 4 - room  # 3 sentinels and the EOT
        if keep is not None:
            over = max(over, 0) + round((1 - keep) * max(0, len(prefix) + len(suffix) - max(over, 0)))
        if over > 0:
            cut = min(over, len(suffix))
            suffix, over = suffix[: len(suffix) - cut], over - cut
            cut = min(over, len(prefix))
            prefix, over = prefix[cut:], over - cut
        layout = fim_layout(prefix, middle, suffix, self._sentinels, spm=spm)
        return layout if over > 0 or not eot else [*layout, self._eot]

    def _clean_text(self, piece: np.ndarray) -> tuple[int, int, str | None]:
        """(lead, trail, text): a window edge can cut a multi-byte UTF-8 character, which decodes to U+FFFD.
        Up to 3 tokens at either edge (a character has at most 4 bytes) are kept out of the FIM span
        until the text decodes cleanly; a piece that still holds U+FFFD gets text None."""
        ids = piece.tolist()
        text = self._plain.decode(ids, skip_special_tokens=False)
        lead = trail = 0
        while text.startswith("\ufffd") and lead < 3 and lead + trail < len(ids):
            lead += 1
            text = self._plain.decode(ids[lead : len(ids) - trail], skip_special_tokens=False)
        while text.endswith("\ufffd") and trail < 3 and lead + trail < len(ids):
            trail += 1
            text = self._plain.decode(ids[lead : len(ids) - trail], skip_special_tokens=False)
        return lead, trail, (None if "\ufffd" in text else text)

    def val_batches(self, batch_size: int, max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed held-out windows (no FIM, deterministic, the same on every rank/call): up to
        batch_size * max_batches non-overlapping windows spread evenly over the held-out stream.
        Empty when nothing is held out."""
        if batch_size < 1 or max_batches < 1:
            raise ValueError(
                "PretrainData.val_batches: need batch_size, max_batches >= 1;"
                f" got {batch_size}, {max_batches}"
            )
        seq_len, n = self.cfg.seq_len, self.n_val_tokens
        if n == 0:
            return []
        available = (n - 1) // seq_len
        if available == 0:
            raise ValueError(
                f"{self.cfg.source}: the held-out stream has {n} tokens,"
                f" fewer than seq_len + 1 = {seq_len + 1} (raise holdout or lower seq_len)"
            )
        k = min(available, batch_size * max_batches)
        starts = np.linspace(0, available - 1, k).round().astype(np.int64) * seq_len
        rows = torch.from_numpy(np.stack([self.val.read(int(s), seq_len + 1) for s in starts]))  # (k, T + 1)
        return [
            (rows[i : i + batch_size, :-1].contiguous(), rows[i : i + batch_size, 1:].contiguous())
            for i in range(0, k, batch_size)
        ]

    def val_texts(self) -> list[str]:
        """The held-out documents' text (for FIM exact match and syntax checks). A repository-level
        document (`data.packing`: `<|repo_name|>repo`, then `<|file_sep|>path` and the text of each file)
        gives the text of each of its files: whole, it was no source file `ast.parse` reads, and a data
        build with `layout: repo` left the final checks without a single held-out function."""
        if self._val_texts is None:
            ids = self.val.read(0, self.n_val_tokens)
            repo, sep = (self.tokenizer.token_to_id(t) for t in (REPO_NAME, FILE_SEP))
            cuts = np.flatnonzero(np.isin(ids, [i for i in (self._eot, repo, sep) if i is not None]))
            texts = []
            # (start, end, the marker before it) of the pieces between EOTs and repository-level markers
            starts, ends = [0, *(cuts + 1).tolist()], [*cuts.tolist(), len(ids)]
            for lo, hi, before in zip(starts, ends, [self._eot, *ids[cuts].tolist()], strict=True):
                if before == repo or (lo == hi and (hi == len(ids) or ids[hi] != self._eot)):
                    continue  # a repository's name; nothing before a marker or after the last EOT
                text = self.tokenizer.decode(ids[lo:hi].tolist(), skip_special_tokens=False)
                texts.append(text.partition("\n")[2] if before == sep else text)  # a file's path line first
            self._val_texts = texts
        return list(self._val_texts)

    def digest(self) -> str:
        """A short digest of the data as opened: the document count and each split's token counts. Files
        added, removed or edited under the same path give another (a resume compares them); from the
        counts opening computed, so it costs no pass over the data."""
        sizes = np.array([self.n_documents, self.n_train_tokens, self.n_val_tokens], np.int64)
        h = hashlib.sha256(sizes.tobytes())
        h.update(self._train_counts.tobytes())
        h.update(self._val_counts.tobytes())
        return h.hexdigest()[:16]

    def unigram_loss(self) -> float:
        """Cross-entropy (nats/token) of the held-out tokens under the add-one-smoothed unigram distribution
        of the training tokens: the baseline a model must beat."""
        if self.n_val_tokens == 0:
            raise ValueError(f"{self.cfg.source}: no held-out tokens (holdout={self.cfg.holdout})")
        log_p = np.log(self._train_counts + 1.0) - math.log(self.n_train_tokens + self.vocab_size)
        return float(-(self._val_counts * log_p).sum() / self.n_val_tokens)
