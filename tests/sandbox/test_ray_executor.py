"""The Ray executor on a real local Ray instance gives exactly the local executor's verdicts."""

import pytest

from codefoundry.sandbox import Judge, Limits, Program, execute_many

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_matches_local(local_ray):
    judge = Judge(tests=("assert sq(3) == 9", "assert sq(-2) == 4"), entry_point="sq")
    programs = [f"print({i} * {i})" for i in range(30)]
    programs += [
        Program("def sq(x):\n    return x * x", judge=judge),
        Program("def sq(x):\n    return x + x", judge=judge),
    ]
    programs += [Program("while True: pass", limits=Limits(cpu_seconds=1)), Program("raise SystemExit(4)")]
    programs += [Program('#include <stdio.h>\nint main(){puts("c");}', language="c")]
    local = execute_many(programs, workers=2, progress=False)
    remote = execute_many(programs, workers=2, executor="ray", progress=False)

    def key(r):
        return (r.status, r.exit_code, r.stdout, r.passed, tuple(t.passed for t in r.tests), r.isolation)

    assert [key(r) for r in remote] == [key(r) for r in local]
    assert [r.stdout for r in remote[:30]] == [f"{i * i}\n" for i in range(30)]
    assert remote[30].passed and not remote[31].passed
    assert remote[32].status.value == "timeout" and remote[33].exit_code == 4


def test_a_batch_whose_ray_task_fails_is_sandbox_error_and_the_others_are_kept(local_ray, monkeypatch):
    # A task that fails for good (here one that raises; on a cluster a lost node) used to raise out of
    # execute_many, and every batch that had finished was lost with it.
    from codefoundry.sandbox import Status, ray_executor

    run_batch = ray_executor._run_batch

    def failing(batch, language, limits):  # pickled by value into the Ray worker (defined in a function)
        if any(p.source == "print('poison')" for p in batch):
            raise OSError("the node went away")
        return run_batch(batch, language, limits)

    monkeypatch.setattr(ray_executor, "_run_batch", failing)
    programs = [f"print({i})" for i in range(16)] + ["print('poison')"]
    results = execute_many(programs, workers=2, executor="ray", progress=False)
    lost = [i for i, r in enumerate(results) if r.status is Status.SANDBOX_ERROR]
    assert 16 in lost and len(lost) < len(programs), [r.status for r in results]
    assert all("OSError: the node went away" in results[i].message and not results[i].passed for i in lost)
    assert all(results[i].stdout == f"{i}\n" for i in range(16) if i not in lost)
