"""Scale-out for `execute_many(..., executor="ray")`: batches go to Ray tasks, each of which runs them on
the warm local sandbox pool of its Ray worker process. Results are the local executor's, in input order.

A batch whose task fails for good (Ray retries a crashed worker; a lost node, an exception in the task)
comes back as `sandbox_error` results naming the failure, never as wrong answers, and the other batches'
results are kept. Interrupted (Ctrl-C), the pending batches are cancelled and `Interrupted` holds the
results of the batches that came back."""

from __future__ import annotations

from codefoundry.sandbox.api import Interrupted
from codefoundry.sandbox.result import ExecutionResult, Isolation, Limits, Status
from codefoundry.sandbox.worker import warn_weaker


def _run_batch(batch: list, language: str, limits: Limits) -> list[dict]:
    from codefoundry.sandbox.api import execute_many

    results = execute_many(batch, workers=1, language=language, limits=limits, progress=False)
    return [r.to_dict() for r in results]


def execute_on_ray(
    items: list,
    *,
    workers: int,
    language: str,
    limits: Limits,
    progress: bool,
    description: str = "executing",
) -> list[ExecutionResult]:
    """`items` (checked Program objects) in batches on Ray, their results in input order; the progress bar
    is labelled `description`, as the local executor's."""
    if not items:
        return []  # nothing to run: no reason to start Ray
    try:
        import ray
    except ImportError:
        raise RuntimeError("executor='ray' needs Ray: pip install 'codefoundry[ray]'") from None
    from tqdm import tqdm

    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_run_batch)
    size = max(1, min(64, -(-len(items) // (4 * workers))))
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    pending = {
        remote.remote(batch, language, limits): start
        for start, batch in zip(range(0, len(items), size), batches, strict=False)
    }
    results: list[ExecutionResult | None] = [None] * len(items)
    try:
        with tqdm(total=len(items), desc=description, unit="run", disable=not progress, leave=False) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    start = pending.pop(ref)
                    try:
                        batch_results = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        why = (str(e).strip().splitlines() or [""])[-1]
                        error = ExecutionResult.sandbox_error(
                            f"ray: the batch's task failed: {type(e).__name__}: {why}"
                        )
                        batch_results = [error.to_dict()] * len(batches[start // size])
                    for offset, d in enumerate(batch_results):
                        results[start + offset] = ExecutionResult.from_dict(d)
                    bar.update(len(batch_results))
    except BaseException as e:
        # An interrupt (or an error) here left every batch already submitted running on Ray to its end.
        for ref in pending:
            try:
                ray.cancel(ref)
            except Exception:
                pass
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(results) from None  # the batches that came back are kept
        raise
    _warn_if_weaker(results)  # type: ignore[arg-type]
    return results  # type: ignore[return-value]


def _warn_if_weaker(results: list[ExecutionResult]) -> None:
    """The warning a local worker prints where isolation is weaker, here in the caller: the Ray worker that
    printed it writes to a log nobody is shown (log_to_driver=False)."""
    levels = {r.isolation for r in results if r.status is not Status.SANDBOX_ERROR}
    unfiltered = any(r.extra.get("syscall_filter") is False for r in results)
    if levels - {Isolation.NAMESPACES} or unfiltered:
        weaker = sorted(level.value for level in levels - {Isolation.NAMESPACES})
        reasons = [f"{', '.join(weaker)} level on Ray workers"] if weaker else []
        reasons += ["no seccomp filter on Ray workers"] if unfiltered else []
        warn_weaker("; ".join(reasons))
