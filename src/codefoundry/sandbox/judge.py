"""The worker's judge server: one long-lived process that runs the trusted tests of judged runs.

Loaded by path into the zygote (standard library only; the zygote hands it its `jail` and `testcode`
modules, the latter with the channel module as `testcode.rpc`). It lives under its own unprivileged uid, outside every run's PID namespace, so a program can neither see,
signal, trace nor read it. Per judged run it receives the tests and three fds (the channel to the
program and a report pipe) over a Unix socket, runs the tests in a fresh namespace, reports, and closes
the fds. Being warm, it costs a judged run no fork. Modules imported by test code persist between runs
(trusted code only).
"""

import json
import os
import socket
import types

JUDGE_LIMITS = {"file_size_mb": 16, "open_files": 64, "processes": 16}
JUDGE_MEMORY_MB = 2048


class JudgeServer:
    def __init__(
        self,
        uid: int,
        isolated: bool,
        *,
        jail: types.ModuleType,
        testcode: types.ModuleType,
    ) -> None:
        self.jail = jail
        self.process = jail.Helper(lambda sock_fd: _serve(sock_fd, uid, isolated, jail, testcode))

    def submit(self, payload: bytes, fds: list[int]) -> None:
        sock = self.process.socket()
        try:
            self.jail.send_with_fds(sock, payload, fds)
        except OSError:
            self.kill()  # the run's report pipe closes with it: the run reports a sandbox error

    def kill(self) -> None:
        self.process.kill()


def _serve(
    sock_fd: int,
    uid: int,
    isolated: bool,
    jail: types.ModuleType,
    testcode: types.ModuleType,
) -> None:
    try:
        null = os.open("/dev/null", os.O_RDWR)
        jail.arrange_fds({0: null, 1: null, 2: null, 3: sock_fd})
        os.chdir("/")
        jail.drop_privileges(JUDGE_LIMITS, uid, isolated, dumpable=False)
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (JUDGE_MEMORY_MB << 20,) * 2)  # no CPU limit: it lives on
        sock = socket.socket(fileno=3)
        while (message := jail.receive_with_fds(sock, 3)) is not None:
            payload, fds, _ = message
            _judge_one(testcode, json.loads(payload), *fds)
    except BaseException:
        pass
    os._exit(0)


def _judge_one(testcode: types.ModuleType, payload: dict, rfd: int, wfd: int, report_fd: int) -> None:
    try:
        channel = testcode.rpc.Channel(rfd, wfd, "j")
        report = testcode.run_judge(channel, payload.get("setup", ""), list(payload["tests"]),
                                    payload["entry_point"], bool(payload.get("stop_on_failure")))  # fmt: skip
    except BaseException as e:
        report = {"error": f"judge: {type(e).__name__}: {e}"[:300]}
    os.close(wfd)  # ends the program's serving loop
    os.close(rfd)
    try:
        os.write(report_fd, json.dumps(report).encode() + b"\n")
    except OSError:
        pass
    os.close(report_fd)
