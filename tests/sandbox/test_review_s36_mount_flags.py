"""Host mounts under a directory the jail binds read-only keep their own atime mode and nosymfollow
(session 36). `jail._read_only_below` remounts each one read-only; it kept noexec, noatime and nodiratime
but not strictatime: a mount with strictatime and nodiratime was remounted relatime, which in a user
namespace, where the host's atime mode is locked, the kernel refuses (EPERM), so the worker could not start
at the user_namespace level. nosymfollow was dropped, so a symlink the host would not follow was followed.

Played in a mount namespace of the test's own: a tmpfs on /opt, under it a world-writable tmpfs with
strictatime and nodiratime (a shared volume) and one with noexec and nosymfollow holding a symlink; the
worker is started as uid 65534 (as test_sandbox_unprivileged.py does) and as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from redteam_kit import readable_package_copy
from test_sandbox_unprivileged import NOBODY, SYSTEM_PYTHON, _can_switch_user, _userns_lent

LAYOUT = (
    "mount -t tmpfs -o size=1m tmpfs /opt && mkdir /opt/vol /opt/nx"
    " && mount -t tmpfs -o size=1m,mode=1777,strictatime,nodiratime tmpfs /opt/vol"
    " && mount -t tmpfs -o size=1m,noexec,nosymfollow tmpfs /opt/nx"
    " && echo data > /opt/nx/target && ln -s /opt/nx/target /opt/nx/link"
)
# What a program sees: the errno of writing to the volume and of opening the symlink, then the file's text.
_PROBE = """
out = []
for path, mode in (('/opt/vol/planted', 'w'), ('/opt/nx/link', 'r')):
    try:
        open(path, mode).close()
        out.append('done')
    except OSError as e:
        out.append(e.errno)
print(*out, open('/opt/nx/target').read().strip())
"""
_SCRIPT = (
    "import json\nfrom codefoundry.sandbox import execute\n"
    f"r = execute({_PROBE!r})\nprint(json.dumps([r.isolation.value, r.status.value, r.stdout.strip()]))\n"
)


def _skip_unless_root_with_unshare() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to lay out mounts of its own")
    if any(p.startswith("/opt/") for p in (sys.prefix, sys.base_prefix, SYSTEM_PYTHON)):
        pytest.skip("this Python lives in /opt, which the test covers")


def _in_layout(args: list[str], env: dict[str, str]) -> list:
    """`args` run in a private mount namespace holding LAYOUT; its last line of output, as JSON."""
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{LAYOUT} && exec "$@"', "layout", *args],
        capture_output=True, text=True, timeout=120, cwd="/", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def package():
    """A copy of the package that uid 65534 can read."""
    yield from readable_package_copy("cf-mount-flags-")


def test_a_user_namespace_worker_starts_over_strictatime_and_nosymfollow_mounts(package):
    _skip_unless_root_with_unshare()
    if _can_switch_user() is not None:
        pytest.skip(str(_can_switch_user()))
    if not _userns_lent():
        pytest.skip("this kernel lends no unprivileged user namespace")
    nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": package}
    found = _in_layout([*nobody, SYSTEM_PYTHON, "-c", _SCRIPT], env)
    # EROFS on the volume, ELOOP on the symlink of the nosymfollow mount, the file itself readable
    assert found == ["user_namespace", "ok", "30 40 data"], found


def test_a_root_worker_keeps_nosymfollow_too(package):
    _skip_unless_root_with_unshare()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": package}
    found = _in_layout([sys.executable, "-c", _SCRIPT], env)
    assert found == ["namespaces", "ok", "30 40 data"], found
