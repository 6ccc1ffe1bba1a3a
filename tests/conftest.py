import sys

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Test models are tiny: intra-op threads only add synchronisation, which on a busy machine costs
    seconds per test. Modules that use torch have imported it by the time this runs."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _stop_sandbox_workers():
    yield
    from codefoundry.sandbox import shutdown

    shutdown()
