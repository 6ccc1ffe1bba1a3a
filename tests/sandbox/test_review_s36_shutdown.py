"""Shutting down a pool whose workers' cgroups still hold processes (session 36): each busy cgroup was
waited for in turn, up to 2 s each, and then left behind. Now what is left in them is killed (cgroup.kill,
or each listed process on cgroup v1) and all are removed with one deadline for the pool.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from redteam_kit import reap_and_remove

from codefoundry.sandbox import api

WORKERS = 3
# Joins the cgroups given, says so, ignores SIGTERM, and stays (as a run's process that a killed worker left
# still leaving, or one that would not leave).
_HOLD = 'for c in "$@"; do echo $$ > "$c/cgroup.procs" || exit 1; done; trap "" TERM; echo in; exec sleep 60'


def test_a_pool_whose_workers_cgroups_are_busy_shuts_down_at_once_and_removes_them():
    pool = api.Pool()
    holders: list[subprocess.Popen] = []
    paths: list[str] = []
    try:
        pool.warm(WORKERS)
        workers = list(pool._all)
        paths = [path for worker in workers for path in worker.cgroups]
        if len(workers) < WORKERS or any(not worker.cgroups for worker in workers):
            pytest.skip("the workers here have no cgroups of their own")
        for worker in workers:
            holder = subprocess.Popen(["sh", "-c", _HOLD, "hold", *worker.cgroups], stdout=subprocess.PIPE)
            holders.append(holder)
            assert holder.stdout.readline() == b"in\n", "a holder could not join its worker's cgroups"
        started = time.monotonic()
        pool.close()
        took = time.monotonic() - started
        left = [path for path in paths if os.path.exists(path)]
        assert not left, f"busy cgroups left behind: {left}"
        for holder in holders:
            assert holder.wait(timeout=5) == -9, "a process in a worker's cgroup outlived the shutdown"
        # Waited for one by one, each busy cgroup cost 2 s: 6 s for these workers (12 s on cgroup v1, with
        # two cgroups each). A bound well under that, and well over one shared deadline of 2 s.
        assert took < 4.0, f"the shutdown of {WORKERS} busy workers took {took:.1f} s"
    finally:
        pool.close()
        reap_and_remove(holders, paths)
        for holder in holders:
            holder.stdout.close()
