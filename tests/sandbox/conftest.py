"""Shared set-up for the sandbox suites (test_redteam_*.py, test_integrity_*.py, and the rest).

Makes `codefoundry` importable from the source tree when the package is not installed, and stops the
sandbox's warm workers at the end of the session so that no worker outlives pytest."""

from __future__ import annotations

import pathlib
import sys

import pytest

try:
    import codefoundry.sandbox  # noqa: F401
except ImportError:  # not installed: use the checkout's src/ layout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))


@pytest.fixture(scope="session", autouse=True)
def _stop_sandbox_workers():
    yield
    from codefoundry.sandbox import shutdown

    shutdown()


@pytest.fixture
def one_worker():
    """One fresh worker for a test's consecutive runs, killed afterwards (crossrun_kit.one_worker_session)."""
    from crossrun_kit import one_worker_session

    yield from one_worker_session()
