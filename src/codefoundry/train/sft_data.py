"""SFT data: records from JSONL/Parquet, rendered in the tokenizer's chat tokens, with labels on the
response only, packed several examples per sequence.

Records (one per JSONL line or Parquet row) are either
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation; every assistant turn is trained;
- `{"prompt": ..., "completion": ...}`: one exchange; rendered as a user turn and an assistant turn
  (`prompt_format="chat"`) or as raw text, prompt then completion then `<|endoftext|>`
  (`prompt_format="plain"`: what `Backend.complete` and the eval harness's base-model prompting see).
Other fields (task ids, pass info, ...) are carried along and ignored.

Rendering (chat) is the one the `cf:` backend builds for prompts: per message `<|im_start|>` + the text
`role\\ncontent` + `<|im_end|>` + `\\n`. An assistant turn is encoded as `assistant\\n` and the content
separately, which is exactly the generation prompt the backend ends with, then the reply. Message text is
encoded with `plain_text_copy`, so a message holding "<|im_end|>" cannot forge a turn boundary. Labels:
the assistant content and its closing `<|im_end|>` (plain: the completion and `<|endoftext|>`); the
role header, the newline after `<|im_end|>` and every other turn are context only.

Length: an example longer than `seq_len` is truncated from the right (`overlong="truncate"`, the
default; if nothing to train on is left it is dropped) or dropped (`overlong="drop"`); both are counted
in `DataStats`. Packing: best-fit decreasing on example lengths (deterministic; ties keep data order), so
one sequence holds several whole examples; none is ever split across sequences. In a batch each
example's positions restart at 0 and the attention mask is block-diagonal causal: a token sees only
earlier tokens of its own example (padding forms its own block, so no softmax row is empty). The target
of an example's last token is ignored, so nothing is predicted across a boundary.

Limits: the whole dataset is tokenized in memory (fine to millions of short examples; not a streaming
loader); the (B, 1, T, T) boolean mask costs B*T*T bytes per micro-batch.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codefoundry.jsonl import text_lines
from codefoundry.models.tokenizer import EOT, IM_END, IM_START, plain_text_copy, special_id

IGNORE = -100
PROMPT_FORMATS = ("chat", "plain")
OVERLONG = ("truncate", "drop")
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class SFTDataError(ValueError):
    """A record or file that cannot be used; the message is one line naming FILE:LINE and the problem."""


@dataclass(frozen=True)
class Record:
    where: str  # "FILE:LINE" (JSONL) or "FILE:row N" (Parquet), for errors
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs
    prompt: str | None = None
    completion: str | None = None


@dataclass(frozen=True, eq=False)  # arrays: compare `ids`/`train` explicitly
class Example:
    """One rendered example: token ids and, per token, whether it is a response token (a label)."""

    ids: np.ndarray  # (n,) int64
    train: np.ndarray  # (n,) bool: token i is predicted (it is the target of position i - 1)
    where: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_targets(self) -> int:
        return int(self.train[1:].sum())  # token 0 has no position before it to predict it


# ------------------------------------------------------------------------------------------- reading


def data_files(path: str | Path) -> list[Path]:
    """`path` itself, or the data files (.jsonl, .jsonl.gz, .json, .parquet) under a directory, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SFTDataError(f"{path}: no such data file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise SFTDataError(f"{path}: no {', '.join(SUFFIXES)} files in this directory")
    return files


def read_records(path: str | Path) -> list[Record]:
    """Every record of the file (or of the files under the directory), validated, in order."""
    records: list[Record] = []
    for file in data_files(path):
        for where, raw in _raw_records(file):
            records.append(parse_record(raw, where))
    if not records:
        raise SFTDataError(f"{path}: no records")
    return records


def _raw_records(file: Path) -> Iterator[tuple[str, Any]]:
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise SFTDataError(f"{file}: reading Parquet needs pyarrow (pip install codefoundry[data])")
        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError family
            raise SFTDataError(f"{file}: cannot read as Parquet ({e})") from None
        for i, row in enumerate(rows, start=1):
            yield f"{file}:row {i}", row
        return
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            for lineno, line in text_lines(f, file, SFTDataError):
                try:
                    yield f"{file}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise SFTDataError(
                        f"{file}:{lineno}: not valid JSON ({e.msg}, column {e.colno})"
                    ) from None
    except OSError as e:
        raise SFTDataError(f"{file}: cannot read ({e.strerror or e})") from None


def parse_record(raw: Any, where: str) -> Record:
    """Check one record's shape; raise SFTDataError naming `where` and what is wrong."""
    if not isinstance(raw, dict):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    has_messages = raw.get("messages") is not None
    has_pair = raw.get("prompt") is not None or raw.get("completion") is not None
    if has_messages and has_pair:
        raise SFTDataError(f"{where}: has both `messages` and `prompt`/`completion`; keep one")
    if has_messages:
        return Record(where, messages=_messages(raw["messages"], where))
    if not has_pair:
        raise SFTDataError(f"{where}: needs `messages` or `prompt` and `completion`")
    for key in ("prompt", "completion"):
        if not isinstance(raw.get(key), str):
            got = "missing" if raw.get(key) is None else f"a {type(raw[key]).__name__}"
            raise SFTDataError(f"{where}: `{key}` must be a string, it is {got}")
    if not raw["completion"]:
        raise SFTDataError(f"{where}: `completion` is empty: nothing to train on")
    return Record(where, prompt=raw["prompt"], completion=raw["completion"])


def _messages(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise SFTDataError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise SFTDataError(f"{where}: messages[{i}] must be an object with string `role` and `content`")
        if not m["role"] or "\n" in m["role"]:
            raise SFTDataError(f"{where}: messages[{i}] has role {m['role']!r} (empty or multi-line)")
        out.append((m["role"], m["content"]))
    if not any(role == "assistant" for role, _ in out):
        raise SFTDataError(f"{where}: no assistant message: nothing to train on")
    return tuple(out)


# ----------------------------------------------------------------------------------------- rendering


class Renderer:
    """Turns records into `Example`s with the tokenizer's chat tokens (see the module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self.plain = plain_text_copy(tokenizer)
        why = "SFT's chat rendering"
        self.im_start = special_id(tokenizer, IM_START, why)
        self.im_end = special_id(tokenizer, IM_END, why)
        self.eot = special_id(tokenizer, EOT, why)
        self.newline = self._encode("\n")

    def _encode(self, text: str) -> list[int]:
        return self.plain.encode(text, add_special_tokens=False).ids if text else []

    def render(self, record: Record, *, prompt_format: str = "chat") -> Example:
        if record.messages:
            return self.chat(record.messages, where=record.where)
        assert record.prompt is not None and record.completion is not None
        if prompt_format == "plain":
            return self.plain_pair(record.prompt, record.completion, where=record.where)
        return self.chat((("user", record.prompt), ("assistant", record.completion)), where=record.where)

    def chat(self, messages: Sequence[tuple[str, str]], *, where: str = "") -> Example:
        ids: list[int] = []
        train: list[bool] = []
        for role, content in messages:
            if role == "assistant":
                header, body = self._encode("assistant\n"), self._encode(content)
                ids += [self.im_start, *header, *body, self.im_end, *self.newline]
                train += [False] * (1 + len(header)) + [True] * (len(body) + 1) + [False] * len(self.newline)
            else:
                turn = self._encode(f"{role}\n{content}")
                ids += [self.im_start, *turn, self.im_end, *self.newline]
                train += [False] * (len(turn) + 2 + len(self.newline))
        return Example(np.asarray(ids, dtype=np.int64), np.asarray(train, dtype=bool), where)

    def plain_pair(self, prompt: str, completion: str, *, where: str = "") -> Example:
        head, body = self._encode(prompt), self._encode(completion)
        ids = [*head, *body, self.eot]
        train = [False] * len(head) + [True] * (len(body) + 1)
        return Example(np.asarray(ids, dtype=np.int64), np.asarray(train, dtype=bool), where)


@dataclass
class DataStats:
    records: int = 0
    truncated: int = 0  # longer than seq_len, cut from the right, still trained
    dropped_overlong: int = 0  # longer than seq_len and dropped (overlong="drop", or nothing left)
    dropped_no_targets: int = 0  # no response token inside the example (e.g. a one-token reply first)
    examples: int = 0  # kept
    response_tokens: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def fit_examples(
    examples: Sequence[Example], *, seq_len: int, overlong: str = "truncate", stats: DataStats | None = None
) -> list[Example]:
    """Examples that fit in `seq_len` tokens and have at least one target; the rest truncated or dropped
    as `overlong` says, counted in `stats`."""
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    stats = stats if stats is not None else DataStats()
    kept = []
    for ex in examples:
        stats.records += 1
        if len(ex) > seq_len:
            if overlong == "drop":
                stats.dropped_overlong += 1
                continue
            ex = Example(ex.ids[:seq_len], ex.train[:seq_len], ex.where)
            if ex.n_targets == 0:
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
        if ex.n_targets == 0:
            stats.dropped_no_targets += 1
            continue
        kept.append(ex)
        stats.examples += 1
        stats.response_tokens += ex.n_targets
        stats.tokens += len(ex)
    return kept


# ------------------------------------------------------------------------------------------- packing


def pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Best-fit decreasing: indices of the examples in each sequence (every length must be <= seq_len).

    Longest first (ties in index order), each into the open sequence with the least room that still
    fits it, else a new one. Deterministic; each sequence lists its examples in placement order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, bin index)
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens, more than seq_len={seq_len}")
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            free, b = room.pop(at)
            bins[b].append(i)
            if free - n > 0:
                bisect.insort(room, (free - n, b))
        else:
            bins.append([i])
            if seq_len - n > 0:
                bisect.insort(room, (seq_len - n, len(bins) - 1))
    return bins


@dataclass
class Batch:
    """One micro-batch. ids, targets, positions: (B, T) int64; mask: (B, 1, T, T) bool, True = attend."""

    ids: Any
    targets: Any
    positions: Any
    mask: Any
    n_targets: int = 0
    n_examples: int = 0
    segments: Any = field(default=None, repr=False)  # (B, T) example index within its row, -1 = padding


def collate(rows: Sequence[Sequence[Example]], *, pad_id: int, length: int | None = None) -> Batch:
    """A batch of rows, each a sequence of examples packed end to end, padded to the longest row (or to
    `length`). Positions restart at 0 per example; the mask is block-diagonal causal."""
    import torch

    T = length or max(sum(len(ex) for ex in row) for row in rows)
    B = len(rows)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.full((B, T), IGNORE, dtype=np.int64)
    positions = np.zeros((B, T), dtype=np.int64)
    segments = np.full((B, T), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        at = 0
        for s, ex in enumerate(row):
            n = len(ex)
            if at + n > T:
                raise ValueError(f"row {b} holds {at + n} tokens, more than the batch length {T}")
            ids[b, at : at + n] = ex.ids
            # Position i predicts token i + 1 when that token is a response token; the last predicts nothing.
            targets[b, at : at + n - 1] = np.where(ex.train[1:], ex.ids[1:], IGNORE)
            positions[b, at : at + n] = np.arange(n)
            segments[b, at : at + n] = s
            at += n
        positions[b, at:] = np.arange(T - at)  # padding: harmless positions, attended by padding only
    seg = torch.from_numpy(segments)
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return Batch(
        ids=torch.from_numpy(ids),
        targets=torch.from_numpy(targets),
        positions=torch.from_numpy(positions),
        mask=(same & causal).unsqueeze(1),  # (B, 1, T, T)
        n_targets=int((targets != IGNORE).sum()),
        n_examples=sum(len(r) for r in rows),
        segments=seg,
    )


# ----------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class SplitData:
    """Rendered, length-fitted examples of one split and their packing into sequences."""

    examples: list[Example]
    rows: list[list[int]]  # example indices per sequence
    stats: DataStats

    def fill(self, seq_len: int) -> float:
        """Share of the sequences' `seq_len` token slots that hold real tokens (1.0 = no padding)."""
        return self.stats.tokens / max(1, len(self.rows) * seq_len)


def build_split(
    records: Sequence[Record],
    renderer: Renderer,
    *,
    seq_len: int,
    prompt_format: str = "chat",
    overlong: str = "truncate",
    packing: bool = True,
) -> SplitData:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    stats = DataStats()
    rendered = [renderer.render(r, prompt_format=prompt_format) for r in records]
    examples = fit_examples(rendered, seq_len=seq_len, overlong=overlong, stats=stats)
    rows = pack([len(e) for e in examples], seq_len) if packing else [[i] for i in range(len(examples))]
    return SplitData(examples, rows, stats)


def split_records(
    records: Sequence[Record], *, eval_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """(train, held-out): a seeded random `eval_fraction` of the records (at least one when the fraction
    is positive and there are two or more records), each list kept in file order."""
    n_eval = round(len(records) * eval_fraction)
    if eval_fraction > 0 and len(records) >= 2:
        n_eval = min(max(1, n_eval), len(records) - 1)
    held = set(random.Random(seed).sample(range(len(records)), n_eval)) if n_eval else set()
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [r for i, r in enumerate(records) if i in held]


@functools.lru_cache(maxsize=4)
def epoch_order(n_rows: int, epoch: int, seed: int) -> tuple[int, ...]:
    """The order in which epoch `epoch` visits the packed sequences (a seeded permutation)."""
    order = list(range(n_rows))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


def rows_for(split: SplitData, start: int, count: int, *, seed: int) -> list[list[Example]]:
    """Sequences `start` .. `start + count` of the endless stream epoch 0, epoch 1, ... (each epoch a
    fresh permutation): a pure function of its arguments, so a resumed run draws the same batches."""
    n = len(split.rows)
    out = []
    for k in range(start, start + count):
        epoch, i = divmod(k, n)
        row = split.rows[epoch_order(n, epoch, seed)[i]] if n else []
        out.append([split.examples[j] for j in row])
    return out
