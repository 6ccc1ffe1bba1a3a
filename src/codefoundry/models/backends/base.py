"""The one model interface: `SamplingParams` in, completions out.

Eval, RL rollouts, agents and serving all talk to a model through `Backend.complete` (raw prompts) or
`Backend.chat` (role/content messages). Every backend returns one list per input holding exactly
`params.n` completions, in input order, with stop strings already applied (the stop string itself is
not included, as with the OpenAI API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
Conversation = Sequence[Message]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_p: float = 0.0  # after temperature, drop tokens below min_p x the most likely one's probability

    def __post_init__(self) -> None:
        # A list given for `stop` would make the params unhashable and mutable; normalise it.
        if isinstance(self.stop, str):
            raise ValueError(
                f"SamplingParams.stop must be a sequence of strings, not the string {self.stop!r}"
            )
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop must not contain empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@runtime_checkable
class Backend(Protocol):
    name: str  # e.g. "openai:gpt-x@http://127.0.0.1:8000/v1"; shown in errors and recorded with results

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        """len(prompts) lists of params.n completions each, in prompt order."""
        ...

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[str]]:
        """len(conversations) lists of params.n assistant replies each, in input order."""
        ...


class BackendError(RuntimeError):
    """A model request that failed for good; the message names the backend, the request and the cause.

    `status` is the HTTP status when a server answered with one, else None.
    """

    status: int | None = None


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` cut before the earliest occurrence of any stop string (unchanged when none occurs)."""
    cut = len(text)
    for s in stop:
        if not s:
            continue
        i = text.find(s, 0, cut + len(s) - 1)  # only a match that starts before the current cut matters
        if i != -1 and i < cut:
            cut = i
    return text[:cut]
