import pytest


@pytest.fixture(scope="session", autouse=True)
def _stop_sandbox_workers():
    yield
    from codefoundry.sandbox import shutdown

    shutdown()
