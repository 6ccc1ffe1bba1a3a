"""Rollouts for RL with verifiable rewards: sample G completions per prompt with our KV-cache generator,
score them in the sandbox (`codefoundry.tasks.problem.evaluate_many`, the one verdict) on a background
thread while the next chunk is generated, and turn them into response-aligned tensors for the update.

Prompts are the problems' `prompt` continued as a base model would (stop at <|endoftext|>, <|file_sep|> or
the HumanEval stop strings), or, with `chat=True`, one user turn in the tokenizer's chat tokens (the
layout `models.backends.local` uses) whose reply ends at <|im_end|> and is turned into a completion by
`tasks.prompts.completion_from_chat`.

Rewards: pass -> 1, fail -> 0, plus optional shaping terms (a format penalty when prompt + completion does
not parse as Python, checked with `ast.parse` which runs nothing; DAPO's soft overlong punishment; a
safety penalty times the risk a pluggable check assigns the completion). A
`sandbox_error` is the sandbox failing, not the model: such a row gets no reward and the caller drops its
whole group (and counts it).

Tensors: rows are right-padded [prompt, response, pad]. Under a causal mask a real token never attends to
the padding after it, so one plain forward serves every row with no attention mask and no position ids.
The logits that predict response token j of row b sit at position p_b - 1 + j; `response_forward`
gathers those positions before the output head, so the head (the largest matmul of a small model) runs
on the R response positions only, as TRL's `logits_to_keep` does. When rows repeat a prompt (the G
samples of a group), the forward computes each distinct prompt once and the responses attend to it
(`train.rl.shared_prefix`): the same numbers, less work. Everything returned is (B, R), R the longest
response, with `mask` 1 on real response tokens.

Limits: log-probs are of the temperature-scaled distribution; top-p truncation at sampling time is not
reflected in them (as in TRL and verl). vLLM as the sampler instead: `train.rl.vllm_engine`.
"""

from __future__ import annotations

import ast
import importlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from codefoundry.models.generate import decode, generate, token_bytes
from codefoundry.models.sampling import child_seed
from codefoundry.models.tokenizer import EOT, FILE_SEP, IM_END, IM_START, plain_text_copy, special_id
from codefoundry.models.transformer import Transformer
from codefoundry.sandbox import Limits
from codefoundry.tasks.problem import Problem, Score, evaluate_many
from codefoundry.tasks.prompts import STOP_SEQUENCES, chat_messages, completion_from_chat, truncate_completion
from codefoundry.train.rl.losses import entropy_from_log_softmax, log_softmax_scaled
from codefoundry.train.rl.shared_prefix import distinct_prompts, shared_prefix_hidden

__all__ = [
    "PendingRollout",
    "Rollout",
    "RolloutTimes",
    "ResponseBatch",
    "RewardStream",
    "RewardWorker",
    "collate",
    "encode_prompts",
    "response_forward",
    "rollout",
    "SafetyCheck",
    "load_safety_check",
    "safety_risks",
    "shaped_rewards",
    "start_rollout",
]

# A base-model completion of a function body ends where a new top-level statement starts.
PLAIN_STOP_STRINGS = STOP_SEQUENCES["humaneval"]


@dataclass
class Rollout:
    """G completions per prompt, rows grouped contiguously by prompt (all lists have B = P * G entries)."""

    problems: list[Problem]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # generated ids; the stop id is kept when a row ended at one
    completions: list[str]  # the text `evaluate` scores
    truncated: list[bool]  # reached max_new_tokens without a stop
    scores: list[Score] = field(default_factory=list)
    # per row, the sampler's log-prob of each response id (softmax(logits / temperature) of the logits it
    # was drawn from): the behaviour policy of an asynchronous update
    logprobs: list[list[float]] = field(default_factory=list)

    def behaviour_logp(self, device) -> torch.Tensor:
        """`logprobs` as (B, R), laid out as `collate` lays out the response ids (0 on padding)."""
        width = max(1, max(len(r) for r in self.response_ids))
        out = torch.zeros(len(self.logprobs), width, dtype=torch.float32)
        for b, row in enumerate(self.logprobs):
            out[b, : len(row)] = torch.tensor(row, dtype=torch.float32)
        return out.to(device)


@dataclass
class RolloutTimes:
    generation_s: float = 0.0  # inside `generate` (main thread)
    reward_busy_s: float = 0.0  # sandbox scoring, on the background thread
    reward_wait_s: float = 0.0  # main thread blocked waiting for rewards (the part not overlapped)
    behaviour_s: float = 0.0  # async runs: the behaviour log-probs (the sampler's, or a value-head forward)
    reward_runs: int = 0  # completions run in the sandbox (copies of another row's take its score)


class PromptCodec:
    """Problem -> prompt ids, stop ids and strings, and generated ids -> completion text."""

    def __init__(self, tokenizer, *, chat: bool = False) -> None:
        self.tokenizer, self.chat = tokenizer, chat
        self.table = token_bytes(tokenizer)
        if chat:
            self._plain = plain_text_copy(tokenizer)
            self.im_start = special_id(tokenizer, IM_START, "a chat prompt")
            self.stop_ids = frozenset(
                {special_id(tokenizer, IM_END, "a chat prompt"), special_id(tokenizer, EOT)}
            )
            self.stop_strings: tuple[str, ...] = ()
        else:
            self.stop_ids = frozenset(special_id(tokenizer, t) for t in (EOT, FILE_SEP))
            self.stop_strings = PLAIN_STOP_STRINGS

    def encode(self, problems: Sequence[Problem]) -> list[list[int]]:
        if not self.chat:
            return [
                e.ids
                for e in self.tokenizer.encode_batch([p.prompt for p in problems], add_special_tokens=False)
            ]
        return [self._chat_ids(chat_messages(p)) for p in problems]

    def _chat_ids(self, messages: list[dict]) -> list[int]:
        # Roles and contents as plain text: a message holding "<|im_end|>" cannot close its own turn.
        texts = [f"{m['role']}\n{m['content']}" for m in messages] + ["\n", "assistant\n"]
        *encoded, newline, assistant = (
            e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)
        )
        im_end = min(self.stop_ids - {special_id(self.tokenizer, EOT)})
        ids: list[int] = []
        for message in encoded:
            ids += [self.im_start, *message, im_end, *newline]
        return ids + [self.im_start, *assistant]

    def truncated(self, ids: Sequence[int], max_new_tokens: int) -> bool:
        """Whether a row's generated `ids` ran out of budget without a stop id or a stop string."""
        return (
            len(ids) >= max_new_tokens
            and ids[-1] not in self.stop_ids
            and not any(s in decode(self.table, ids) for s in self.stop_strings)
        )

    def completion(self, problem: Problem, ids: Sequence[int]) -> str:
        body = ids[:-1] if ids and ids[-1] in self.stop_ids else ids
        text = decode(self.table, body)
        if self.chat:
            return completion_from_chat(text, problem)
        return truncate_completion(text, self.stop_strings)


def encode_prompts(tokenizer, problems: Sequence[Problem], *, chat: bool = False) -> list[list[int]]:
    """The prompt ids the policy continues for each problem (see the module docstring)."""
    return PromptCodec(tokenizer, chat=chat).encode(problems)


def sample_completions(
    model: Transformer, codec: PromptCodec, problems: Sequence[Problem], *, max_new_tokens: int,
    temperature: float, top_p: float, seed: int | Sequence[int], stream: RewardStream | None = None,
) -> Rollout:  # fmt: skip
    """One completion per problem (repeat a problem G times for a group), in one batched `generate` (`seed`:
    one for the batch, or one per row).
    With a `stream`, each row goes to the sandbox the moment it finishes, while the others decode."""
    prompts = codec.encode(problems)
    stops = codec.stop_ids

    def on_done(row: int, ids: list[int]) -> None:
        stream.add(row, problems[row], codec.completion(problems[row], ids))

    # Stop ids are detected here rather than passed to `generate`, so the stop token stays in the row
    # and the policy is trained to emit it.
    def on_token(_row: int, token: int) -> bool:
        return token in stops

    logprobs: list[list[float]] = []
    out = generate(
        model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
        stop_strings=codec.stop_strings, tokenizer=codec.tokenizer, on_token=on_token,
        on_done=on_done if stream is not None else None, logprobs=logprobs,
    )  # fmt: skip
    completions = [codec.completion(p, ids) for p, ids in zip(problems, out, strict=True)]
    truncated = [codec.truncated(ids, max_new_tokens) for ids in out]
    return Rollout(list(problems), prompts, out, completions, truncated, logprobs=logprobs)


class RewardWorker:
    """Scores completions in the sandbox on one background thread, so generation and log-prob forwards
    on the main thread overlap with it. `submit` returns a future of the scores in input order."""

    def __init__(
        self, *, limits: Limits | None = None, workers: int | None = None, dedupe: bool = True
    ) -> None:
        self.limits, self.workers, self.dedupe = limits, workers, dedupe
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cf-rl-reward")

    def submit(self, problems: Sequence[Problem], completions: Sequence[str]) -> Future[list[Score]]:
        pairs = list(zip(problems, completions, strict=True))
        return self._pool.submit(self._score, pairs)

    def stream(self, n: int) -> RewardStream:
        """A stream of `n` rows scored as they arrive (see `RewardStream`)."""
        return RewardStream(self, n)

    def _score(self, pairs: list[tuple[Problem, str]]) -> list[Score]:
        return evaluate_many(pairs, limits=self.limits, workers=self.workers, progress=False)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class RewardStream:
    """Rows scored as they finish generating. `add` queues a row; the worker's thread takes every row
    waiting into one `evaluate_many` call (so the sandbox's workers stay busy) and loops until none is
    left. Only the rows that finish last wait for the sandbox after generation ends.

    With `worker.dedupe` (the default), a row whose completion is identical to an earlier row's of the
    same problem is not run again: it gets that row's score. A policy that has converged on a problem
    samples the same program over and over (with a trained policy on easy problems, 87% of the rows of a
    step were copies, measured), and a deterministic test gives every copy the same verdict anyway. Tests
    whose verdict is random are the exception: turn it off for them (`reward_dedupe`)."""

    def __init__(self, worker: RewardWorker, n: int) -> None:
        self.worker = worker
        self.scores: list[Score | None] = [None] * n
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Problem, str]] = []
        self._futures: list[Future[None]] = []
        self._draining = False
        self._first: dict[tuple[int, str], int] = {}  # (problem, completion) -> the row that runs it
        self._copies: dict[int, int] = {}  # row -> the earlier row whose score it takes
        self.busy_s = 0.0  # sandbox time spent on this stream's rows
        self.executed = 0  # rows actually run in the sandbox

    def add(self, row: int, problem: Problem, completion: str) -> None:
        with self._lock:
            if self.worker.dedupe:
                key = (id(problem), completion)  # rows of one problem share its object
                if key in self._first:
                    self._copies[row] = self._first[key]
                    return
                self._first[key] = row
            self.executed += 1
            self._pending.append((row, problem, completion))
            if not self._draining:
                self._draining = True
                self._futures.append(self.worker._pool.submit(self._drain))

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            t0 = time.perf_counter()
            scores = self.worker._score([(problem, completion) for _, problem, completion in batch])
            self.busy_s += time.perf_counter() - t0
            for (row, _, _), score in zip(batch, scores, strict=True):
                self.scores[row] = score

    def result(self) -> list[Score]:
        """Every row's score, in row order (call after the last `add`)."""
        for future in list(self._futures):
            future.result()
        for row, first in self._copies.items():
            self.scores[row] = self.scores[first]
        missing = [i for i, s in enumerate(self.scores) if s is None]
        if missing:
            raise RuntimeError(f"reward stream: rows {missing[:5]} were never scored")
        return list(self.scores)  # type: ignore[arg-type]


class PendingRollout:
    """A rollout whose rows are generated and whose rewards may still be streaming in the sandbox.
    `behaviour` holds the generating policy's (logp, values or None) when the trainer computed them
    (an asynchronous run); `result()` waits for the last scores."""

    def __init__(self, roll: Rollout, streams: list[RewardStream], generation_s: float) -> None:
        self.roll, self.streams = roll, streams
        self.times = RolloutTimes(generation_s=generation_s)
        self.behaviour: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._done = False

    @classmethod
    def scored(cls, roll: Rollout) -> PendingRollout:
        """A rollout whose scores are all in (one restored from a checkpoint)."""
        pending = cls(roll, [], 0.0)
        pending._done = True
        return pending

    def result(self) -> tuple[Rollout, RolloutTimes]:
        if not self._done:
            t0 = time.perf_counter()
            self.roll.scores = [s for stream in self.streams for s in stream.result()]
            self.times.reward_wait_s = time.perf_counter() - t0
            self.times.reward_busy_s = sum(stream.busy_s for stream in self.streams)
            self.times.reward_runs = sum(stream.executed for stream in self.streams)
            self._done = True
        return self.roll, self.times


def start_rollout(
    model: Transformer, codec: PromptCodec, problems: Sequence[Problem], rewards: RewardWorker, *,
    group_size: int, max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int = 0,
    chunk_rows: int = 64,
) -> PendingRollout:  # fmt: skip
    """G = `group_size` samples of each problem, generated `chunk_rows` rows at a time (whole groups per
    chunk); each row goes to the background worker the moment it finishes, while the rest of its chunk and
    the next chunks generate. Returns once every row is generated; the scores arrive through `result()`.
    Row i samples from stream `child_seed(seed, i)`, so the rollout does not depend on `chunk_rows`."""
    rows = [p for p in problems for _ in range(group_size)]
    per_chunk = max(1, chunk_rows // group_size) * group_size
    parts: list[Rollout] = []
    streams: list[RewardStream] = []
    model.eval()
    t0 = time.perf_counter()
    for start in range(0, len(rows), per_chunk):
        chunk = rows[start : start + per_chunk]
        streams.append(rewards.stream(len(chunk)))
        parts.append(sample_completions(
            model, codec, chunk, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=[child_seed(seed, start + j) for j in range(len(chunk))], stream=streams[-1],
        ))  # fmt: skip
    out = Rollout(
        [p for r in parts for p in r.problems], [x for r in parts for x in r.prompt_ids],
        [x for r in parts for x in r.response_ids], [x for r in parts for x in r.completions],
        [x for r in parts for x in r.truncated], logprobs=[x for r in parts for x in r.logprobs],
    )  # fmt: skip
    return PendingRollout(out, streams, time.perf_counter() - t0)


def rollout(
    model: Transformer, codec: PromptCodec, problems: Sequence[Problem], rewards: RewardWorker, *,
    group_size: int, max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int = 0,
    chunk_rows: int = 64,
) -> tuple[Rollout, RolloutTimes]:  # fmt: skip
    """`start_rollout`, then wait for its scores: the rollout with `scores` filled, and the time split."""
    return start_rollout(
        model, codec, problems, rewards, group_size=group_size, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, chunk_rows=chunk_rows,
    ).result()  # fmt: skip


def shaped_rewards(
    roll: Rollout, *, max_new_tokens: int, format_penalty: float = 0.0, overlong_buffer: int = 0,
    overlong_penalty: float = 0.0, safety_risks: Sequence[float] | None = None, safety_penalty: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """(B,) float32: 1 for a pass, 0 otherwise, minus `format_penalty` when prompt + completion does not
    parse, plus `overlong_penalty` times DAPO's soft overlong term (0 up to max_new - buffer tokens, then
    falling linearly to -1 at max_new), minus `safety_penalty` times each row's risk in [0, 1] (from
    `safety_risks`). Rows with a sandbox error get NaN: they are not rewards."""
    out = []
    risks = safety_risks if safety_risks is not None else [0.0] * len(roll.scores)
    for problem, ids, completion, score, risk in zip(
        roll.problems, roll.response_ids, roll.completions, roll.scores, risks, strict=True
    ):
        if score.infrastructure_error:
            out.append(float("nan"))
            continue
        r = score.reward - safety_penalty * risk
        if format_penalty and problem.language == "python" and not _parses(problem.program(completion)):
            r -= format_penalty
        if overlong_penalty and overlong_buffer > 0:
            room = max_new_tokens - overlong_buffer
            if len(ids) > room:
                r += overlong_penalty * max(-1.0, (room - len(ids)) / overlong_buffer)
        out.append(r)
    return torch.tensor(out, dtype=torch.float32)


# A safety check: (problem, completion) -> risk in [0, 1] (a bool is 0 or 1), 0 for nothing found.
SafetyCheck = Callable[[Problem, str], float]


def load_safety_check(spec: str) -> SafetyCheck:
    """The function `spec` names as "module:function" (importable from the running interpreter)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"safety check {spec!r}: expected 'module:function'")
    try:
        check = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"safety check {spec!r}: {type(e).__name__}: {e}") from None
    if not callable(check):
        raise ValueError(f"safety check {spec!r} is not callable")
    return check


def safety_risks(roll: Rollout, check: SafetyCheck, name: str = "safety check") -> list[float]:
    """Each row's risk by `check`, validated: a hook that raises or answers outside [0, 1] stops the step
    with a message naming it, rather than shaping rewards with garbage."""
    risks = []
    for problem, completion in zip(roll.problems, roll.completions, strict=True):
        try:
            risk = float(check(problem, completion))
        except Exception as e:
            raise ValueError(f"{name} failed on {problem.task_id}: {type(e).__name__}: {e}") from e
        if not 0.0 <= risk <= 1.0:
            raise ValueError(f"{name} returned {risk!r} for {problem.task_id}; a risk is in [0, 1]")
        risks.append(risk)
    return risks


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


# -- tensors ---------------------------------------------------------------------------------------------
@dataclass
class ResponseBatch:
    """Right-padded rows and the response positions; see the module docstring."""

    ids: torch.Tensor  # (B, L) prompt + response + padding
    index: torch.Tensor  # (B, R) position whose output predicts response token j
    targets: torch.Tensor  # (B, R) response ids (0 on padding)
    mask: torch.Tensor  # (B, R) float, 1 on real response tokens
    prompt_lens: torch.Tensor | None = None  # (B,) long; None: not known (no prompt sharing)

    def rows(self, rows: torch.Tensor) -> ResponseBatch:
        """The rows at index `rows`, with the padding columns none of them uses cut off (the response
        width R is kept, so per-row tensors of the whole batch line up with these)."""
        index = self.index[rows]
        length = min(int(index.max()) + 2, self.ids.shape[1]) if index.numel() else 1
        lens = None if self.prompt_lens is None else self.prompt_lens[rows]
        return ResponseBatch(self.ids[rows, :length], index, self.targets[rows], self.mask[rows], lens)


def collate(prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], *, device) -> ResponseBatch:
    """Right-padded (B, L) rows of prompt + response and the (B, R) response layout. A row with an empty
    response gets an all-zero mask."""
    pairs = list(zip(prompt_ids, response_ids, strict=True))
    L = max(len(p) + len(r) for p, r in pairs)
    R = max(1, max(len(r) for r in response_ids))
    # Python lists, one tensor each: per-row tensor writes cost ~10 ms for 32 rows of ~100 tokens.
    ids, index, targets, mask = [], [], [], []
    for p, r in pairs:
        n, start = len(r), len(p) - 1
        ids.append([*p, *r, *[0] * (L - len(p) - n)])
        # Padding points at the last real position (masked anyway); an empty response's row at 0.
        index.append([*range(start, start + n), *[start + n - 1 if n else 0] * (R - n)])
        targets.append([*r, *[0] * (R - n)])
        mask.append([1.0] * n + [0.0] * (R - n))
    return ResponseBatch(
        torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(index, dtype=torch.long, device=device),
        torch.tensor(targets, dtype=torch.long, device=device), torch.tensor(mask, dtype=torch.float32, device=device),
        torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device),
    )  # fmt: skip


def response_forward(
    model: Transformer, batch: ResponseBatch, *, temperature: float, value_head: nn.Module | None = None,
    entropy: bool = False, entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """(logp, entropy or None, values or None), each (B, R) float32, of the response tokens under
    softmax(logits / temperature). The value head reads the last block's output (`Output.hidden`) at the
    position before each response token. `entropy_grad` keeps the entropy in the graph (an entropy bonus);
    plain `entropy` computes it detached, for logging."""
    ids = batch.ids  # (B, L)
    shared = _shared_prompts(model, batch)
    if shared is not None:  # rows repeat prompts (a group's samples): each prompt is computed once
        hidden = shared_prefix_hidden(model, ids, shared[0], batch.index, *shared[1:])  # (B, R, dim)
    else:
        cos, sin = model.rope(None, 0, ids.shape[1])
        x = model.embed(ids)  # (B, L, dim)
        for i, layer in enumerate(model.layers):
            x = layer(x, cos, sin, None, i, None)
        idx = batch.index.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # (B, R, dim)
        hidden = x.gather(1, idx)  # (B, R, dim)
    logits = model.lm_head(model.norm(hidden))  # (B, R, V)
    # One log-softmax serves the log-probs and the entropy (a second softmax and logsumexp over (B, R, V)
    # for the entropy alone cost more than the update's loss did on the tiny model).
    logp_all = log_softmax_scaled(logits, temperature)
    logp = logp_all.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    ent = None
    if entropy or entropy_grad:
        ent = entropy_from_log_softmax(logp_all if entropy_grad else logp_all.detach())
    values = value_head(hidden).squeeze(-1).float() if value_head is not None else None
    return logp, ent, values


def _shared_prompts(model: Transformer, batch: ResponseBatch) -> tuple | None:
    """(prompt lengths, first rows, row -> prompt) when some rows share a prompt and the shared-prefix
    forward computes what the plain one does; None otherwise. Not for an MoE with expert capacity: which
    tokens overflow an expert depends on every token of the forward."""
    moe = model.cfg.moe
    if batch.prompt_lens is None or batch.ids.shape[0] < 2 or (moe is not None and moe.capacity_factor > 0):
        return None
    lens = batch.prompt_lens.clamp(max=batch.ids.shape[1])  # a row cut short has no response: unused
    firsts, which = distinct_prompts(batch.ids, lens)
    return (lens, firsts, which) if len(firsts) < batch.ids.shape[0] else None
