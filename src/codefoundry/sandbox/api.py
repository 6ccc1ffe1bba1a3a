"""The public calls: `execute` runs one program, `execute_many` runs many, in order, on warm workers."""

from __future__ import annotations

import atexit
import itertools
import operator
import os
import queue
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from codefoundry.sandbox.checks import check_language, check_limits, check_program, check_rlimits
from codefoundry.sandbox.result import ExecutionResult, Judge, Limits, Status
from codefoundry.sandbox.worker import Worker, WorkerDied, close_workers


class Interrupted(KeyboardInterrupt):
    """`execute_many` interrupted (Ctrl-C): `results` holds, in input order, the result of each program
    that finished and None for each that did not (the runs still going were stopped). A KeyboardInterrupt,
    so that code that does not look for it stops as it did."""

    def __init__(self, results: list[ExecutionResult | None]) -> None:
        finished = sum(r is not None for r in results)
        super().__init__(f"interrupted: {finished} of {len(results)} programs finished")
        self.results = results


@dataclass(frozen=True)
class Program:
    """One program to run. Fields left as None take the defaults of the `execute_many` call."""

    source: str
    language: str | None = None
    stdin: str | bytes | None = None
    files: Mapping[str, str | bytes] | None = None
    limits: Limits | None = None
    judge: Judge | None = None


class Pool:
    """Warm workers shared by every call in this process; grows on demand, replaces dead workers.

    Each worker (with everything it starts) is pinned to one CPU of this process's affinity set, the
    least used by the pool's other workers: measured on 2 cores, judged HumanEval throughput rose about 8%
    (program and judge hand the CPU to each other instead of waking each other across CPUs). Ties go
    round a per-process random offset, so that pools in several processes spread.
    CODEFOUNDRY_SANDBOX_PIN=0 leaves workers unpinned."""

    def __init__(self) -> None:
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all: list[Worker] = []
        self._offset = random.randrange(1 << 16)
        # Closed (`shutdown` from another thread) while runs go on: each worker they still use or start is
        # closed when its run ends, not kept idle in a pool nothing will close.
        self._closed = False
        self._busy: dict[Worker, object] = {}  # worker -> the `owner` whose program it runs (`stop_runs`)

    def _new_worker(self) -> Worker:
        with self._lock:
            cpu = self._cpu()
        worker = Worker(cpu=cpu)
        with self._lock:
            self._all.append(worker)
        return worker

    def _cpu(self) -> int | None:
        """The CPU for a new worker, or None (one CPU, pinning off, or no affinity calls here)."""
        if os.environ.get("CODEFOUNDRY_SANDBOX_PIN") == "0" or not hasattr(os, "sched_getaffinity"):
            return None
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        used = {c: 0 for c in cpus}
        for w in self._all:
            if w.cpu in used:
                used[w.cpu] += 1
        return min(cpus, key=lambda c: (used[c], (cpus.index(c) + self._offset) % len(cpus)))

    def _take(self) -> Worker:
        # An idle worker may have died while it waited (the OOM killer, a Ctrl-C at the terminal, which
        # signals the workers too): handed a program, it made that a sandbox_error although it never ran.
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return self._new_worker()
            if worker.alive:
                return worker
            self._discard(worker)

    def _give_back(self, worker: Worker) -> None:
        with self._lock:
            # Off `_busy` as it goes idle, under one lock: popped after, it could be another call's entry by
            # then (that call's Ctrl-C then missed it), and `stop_runs` could kill it in that call's hands.
            self._busy.pop(worker, None)
            if worker.alive and not self._closed:
                self._idle.put(worker)
                return
        self._discard(worker)

    def _discard(self, worker: Worker) -> None:
        with self._lock:
            self._busy.pop(worker, None)
        worker.close()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def run(
        self, program: Program, *, language: str, limits: Limits, owner: object = None
    ) -> ExecutionResult:
        """One run on a warm worker; `program` as `checks.check_program` passed it. `owner`: whose run it
        is, for `stop_runs`."""
        try:
            worker = self._take()
        except (WorkerDied, OSError) as e:
            return ExecutionResult.sandbox_error(f"could not start a sandbox worker: {e}")
        with self._lock:
            self._busy[worker] = owner  # until `_give_back` or `_discard`, whatever the run's end
        return self._run_on(worker, program, language=language, limits=limits)

    def stop_runs(self, owner: object) -> None:
        """Kill now the workers running `owner`'s programs (an interrupted `execute_many`: its threads had
        waited for each run to end, a spinning one for its whole CPU limit, with Ctrl-C seemingly ignored).
        Each such run then comes back as a sandbox_error, and its worker is replaced."""
        with self._lock:  # killed under the lock: once let go, a worker may go idle and into another call
            for worker, o in self._busy.items():
                if o is owner:
                    worker.kill()

    def _run_on(self, worker: Worker, program: Program, *, language: str, limits: Limits) -> ExecutionResult:
        try:
            result = worker.run(
                program.source,
                language=program.language or language,
                stdin=program.stdin,
                files=dict(program.files) if program.files else None,
                limits=program.limits or limits,
                judge=program.judge,
            )
        except WorkerDied as e:
            self._discard(worker)
            return ExecutionResult.sandbox_error(str(e), worker.isolation)
        except BaseException:
            # Raised before, during or after its request was sent (an interrupt, a request it cannot
            # encode): its request stream may be out of step, and it must not stay out of the pool alive.
            # Killed first: a zygote mid-run sees its pipes close only once the run ends (`close` waited 5 s).
            worker.kill()
            self._discard(worker)
            raise
        if result.status is Status.SANDBOX_ERROR:
            # The worker exits after an internal error (its request stream may be out of step), possibly
            # a moment after replying: never hand it to the next run.
            self._discard(worker)
        else:
            self._give_back(worker)
        return result

    def warm(self, n: int) -> None:
        """Start workers up front so that start-up is not counted in the first runs. One that cannot start
        ends the warming quietly: each run then tries again, and one that fails is a `sandbox_error` result
        (`run`), so that `execute_many` reports every program instead of raising."""
        with self._lock:
            missing = n - len(self._all)
        for _ in range(max(0, missing)):
            try:
                worker = self._new_worker()
            except (WorkerDied, OSError):
                return
            self._give_back(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = self._all, []
        close_workers(workers)  # together: each worker's waits are not paid in turn
        self._idle = queue.SimpleQueue()


_pool: Pool | None = None
_pool_lock = threading.Lock()


def _default_pool() -> Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = Pool()
            atexit.register(shutdown)
        return _pool


def _forget_pool() -> None:
    """In a child just forked (`os.fork`, multiprocessing's "fork"): the parent's workers stay the parent's.
    The child held copies of their pipes, and a run that both processes sent to one worker came back to
    whichever read first (a program got another's output, or a sandbox_error). The child lets go of its
    copies, leaving the workers alone, and starts workers of its own when it runs something."""
    global _pool, _pool_lock
    pool, _pool, _pool_lock = _pool, None, threading.Lock()  # held by a parent's thread, it would stay held
    if pool is not None:
        for worker in pool._all:
            worker.forget()


os.register_at_fork(after_in_child=_forget_pool)


def shutdown() -> None:
    """Stop every warm worker of this process (they are restarted on the next call)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def execute(
    program: str,
    *,
    language: str = "python",
    stdin: str | bytes | None = None,
    files: Mapping[str, str | bytes] | None = None,
    limits: Limits | None = None,
    judge: Judge | None = None,
) -> ExecutionResult:
    """Run one program in the sandbox and return its result; never raises for anything the program does.
    Raises TypeError or ValueError, naming the argument, for arguments that cannot be run as given."""
    check_limits(limits, "limits")
    limits = limits or Limits()
    check_rlimits(limits, "limits")
    prog = Program(program, language, stdin, files, None, judge)
    check_program(prog, language=language, limits=limits)
    return _default_pool().run(prog, language=language, limits=limits)


def execute_many(
    programs: Iterable[str | Program],
    *,
    workers: int | None = None,
    language: str = "python",
    limits: Limits | None = None,
    executor: str = "local",
    progress: bool = True,
    description: str = "executing",
) -> list[ExecutionResult]:
    """Run many programs, `workers` at a time (None: one per CPU), and return their results in input order.

    Every program is checked before any runs: an entry that cannot be run as given (not a str or Program,
    an unknown language, a bad file name, ...) raises TypeError or ValueError naming it (`programs[3]...`),
    so no result is computed and then lost. What a program does is reported in its own result. Interrupted
    (Ctrl-C), it stops the runs still going and raises `Interrupted`, which holds the results so far."""
    check_limits(limits, "limits")
    limits = limits or Limits()
    check_rlimits(limits, "limits")
    items = _checked(programs, workers=workers, language=language, limits=limits)
    workers = operator.index(workers) if workers is not None else os.cpu_count() or 1
    if executor == "ray":
        from codefoundry.sandbox.ray_executor import execute_on_ray

        return execute_on_ray(
            items,
            workers=workers,
            language=language,
            limits=limits,
            progress=progress,
            description=description,
        )
    if executor != "local":
        raise ValueError(f"unknown executor {executor!r}; use 'local' or 'ray'")
    results: list[ExecutionResult | None] = [None] * len(items)
    pool = _default_pool()
    next_index = itertools.count()  # shared by the threads: next() on it is atomic under the GIL
    stop = threading.Event()  # also the owner of this call's runs in the pool (Pool.stop_runs)
    done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

    def serve() -> None:
        # One thread per worker, each taking the next program as soon as its last one is back.
        try:
            while not stop.is_set() and (i := next(next_index)) < len(items):
                result = pool.run(items[i], language=language, limits=limits, owner=stop)
                if stop.is_set() and result.status is Status.SANDBOX_ERROR:
                    return  # perhaps the interrupt's doing (Pool.stop_runs): unfinished, not an error
                results[i] = result
                done.put(None)
        except BaseException as e:  # raised in the caller below
            done.put(e)

    threads = [
        threading.Thread(target=serve, name=f"cf-sandbox-{k}", daemon=True)
        for k in range(min(workers, len(items)))
    ]
    bar = _progress(len(items), description, progress)
    interrupted = False
    try:
        pool.warm(min(workers, len(items)))
        for t in threads:
            t.start()
        for _ in range(len(items)):
            if (error := done.get()) is not None:
                raise error
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()  # on an error the threads stop after their current run; on an interrupt, at once
        try:
            # Only the threads alive: a Ctrl-C may come before all are started, and join() raises for those.
            while alive := [t for t in threads if t.is_alive()]:
                if interrupted:
                    pool.stop_runs(stop)  # again each round: a thread may have taken a run as stop was set
                for t in alive:
                    t.join(0.05 if interrupted else None)
        except KeyboardInterrupt:
            if not interrupted:
                raise
            # A second Ctrl-C: no more waiting, and still the results (it lost them all, a KeyboardInterrupt
            # from this loop). A thread that took a run past the last stop_runs ends with that run.
            pool.stop_runs(stop)
        bar.close()
    if interrupted:
        raise Interrupted(list(results)) from None
    return results  # type: ignore[return-value]


def _checked(programs: object, *, workers: object, language: str, limits: Limits) -> list[Program]:
    """`execute_many`'s programs as Program objects, once they and its other arguments are known good."""
    if isinstance(programs, str | bytes) or not isinstance(programs, Iterable):
        hint = " (put a single program in a list)" if isinstance(programs, str) else ""
        raise TypeError(
            f"programs must be an iterable of str or Program, got {type(programs).__name__}{hint}"
        )
    check_language(language, "language")
    # Any integer type (numpy.int64 from a config, ...), as range() takes; never a bool.
    if workers is not None and (isinstance(workers, bool) or not hasattr(type(workers), "__index__")):
        raise TypeError(f"workers must be an int or None (one per CPU), got {type(workers).__name__}")
    if workers is not None and operator.index(workers) < 1:
        raise ValueError(f"workers must be >= 1, or None for one per CPU, got {workers}")
    items = []
    for i, entry in enumerate(programs):
        if not isinstance(entry, str | Program):
            raise TypeError(f"programs[{i}] must be a str or a Program, got {type(entry).__name__}")
        item = Program(entry) if isinstance(entry, str) else entry
        check_program(item, language=language, limits=limits, at=f"programs[{i}].")
        items.append(item)
    return items


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=description, unit="run", disable=not enabled, leave=False, dynamic_ncols=True
    )
