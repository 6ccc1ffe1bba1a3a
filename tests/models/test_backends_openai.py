"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 that can be told to misbehave."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from codefoundry.models.backends import BackendError, SamplingParams, load_backend
from codefoundry.models.backends.openai import OpenAIBackend


def _cut(text: str, stops: list[str]) -> str:
    # The server's own stop handling, written independently of truncate_at_stop.
    positions = [text.index(s) for s in stops if s in text]
    return text[: min(positions)] if positions else text


class FakeServer:
    """A deterministic OpenAI-compatible server: choice i of a prompt is f"echo:{prompt[-10:]}#{i}".

    With a seed the text ends in f"~s{seed}", so repeated n=1 requests with different seeds differ.
    Choices come back in reverse index order. `plan` holds misbehaviours, one consumed per request.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.plan: list[tuple[str, Any]] = []  # ("status", (code, headers, body)) or ("hang", None)
        self.reject_n = False  # answer n > 1 with 400 "n must be 1"
        self.max_choices: int | None = None  # answer with at most this many choices
        self.gate: Gate | None = None
        self.release = threading.Event()  # ends hanging handlers at teardown
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, body, dict(self.headers)))
                    action = outer.plan.pop(0) if outer.plan else None
                code, headers, payload = outer.respond(self.path, body, action)
                self.send_response(code)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        # A short poll interval: shutdown() waits up to one interval, at every test's teardown.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def respond(
        self, path: str, body: dict[str, Any], action: tuple[str, Any] | None
    ) -> tuple[int, dict, bytes]:
        if action is not None and action[0] == "status":
            code, headers, payload = action[1]
            return code, headers, payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if action is not None and action[0] == "hang":
            self.release.wait(30)
        if self.reject_n and body.get("n", 1) > 1:
            return (
                400,
                {},
                json.dumps({"error": {"message": "n must be 1", "type": "invalid_request"}}).encode(),
            )
        stops = body.get("stop", [])
        if len(stops) > 4:
            return 400, {}, json.dumps({"error": {"message": "stop: at most 4 sequences"}}).encode()
        if self.gate is not None:
            self.gate.enter(body)
        if path == "/v1/completions":
            source, key = "echo", body["prompt"]
        elif path == "/v1/chat/completions":
            source, key = "chat", body["messages"][-1]["content"]
        else:
            return 404, {}, b'{"error": {"message": "no such route"}}'
        n = body.get("n", 1) if self.max_choices is None else min(body.get("n", 1), self.max_choices)
        seed = f"~s{body['seed']}" if "seed" in body else ""
        texts = [_cut(f"{source}:{key[-10:]}#{i}{seed}", stops) for i in range(n)]
        if path == "/v1/completions":
            choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
        else:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)
            ]
        if self.gate is not None:
            self.gate.leave(body)
        return 200, {}, json.dumps({"object": "list", "choices": choices[::-1]}).encode()


class Gate:
    """Holds requests until `size` of them are in flight at once, then lets them finish in reverse order.

    A client that did not run them concurrently never fills the barrier and the test fails; one that
    ordered results by arrival would return them reversed.
    """

    def __init__(self, prompts: list[str]) -> None:
        self.order = {p: i for i, p in enumerate(prompts)}
        self.barrier = threading.Barrier(len(prompts), timeout=20)
        self.done = [threading.Event() for _ in prompts]

    def enter(self, body: dict[str, Any]) -> None:
        self.barrier.wait()
        i = self.order[body["prompt"]]
        if i + 1 < len(self.done):
            assert self.done[i + 1].wait(20)

    def leave(self, body: dict[str, Any]) -> None:
        self.done[self.order[body["prompt"]]].set()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join()


def backend(server: FakeServer, **options: Any) -> OpenAIBackend:
    options.setdefault("backoff", 0.001)
    options.setdefault("api_key", "")
    return OpenAIBackend("tiny", server.url, **options)


def test_order_is_kept_across_concurrent_requests(server: FakeServer) -> None:
    prompts = [f"prompt number {i:02d}" for i in range(8)]
    server.gate = Gate(prompts)
    out = backend(server, concurrency=8).complete(prompts, SamplingParams())
    assert out == [[f"echo:{p[-10:]}#0"] for p in prompts]


def test_n_choices_sorted_by_index(server: FakeServer) -> None:
    out = backend(server).complete(["a", "bb"], SamplingParams(n=3, temperature=0.8))
    assert out == [["echo:a#0", "echo:a#1", "echo:a#2"], ["echo:bb#0", "echo:bb#1", "echo:bb#2"]]
    assert len(server.requests) == 2


def test_request_bodies_carry_the_sampling_params(server: FakeServer) -> None:
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=33, stop=("\n\n",), seed=11)
    backend(server, api_key="sk-test").complete(["def f():"], params)
    [(path, body, headers)] = server.requests
    assert path == "/v1/completions"
    assert body == {
        "model": "tiny",
        "prompt": "def f():",
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 33,
        "stop": ["\n\n"],
        "seed": 11,
    }
    assert headers["Authorization"] == "Bearer sk-test"


def test_api_key_comes_from_the_environment(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    OpenAIBackend("tiny", server.url).complete(["x"], SamplingParams())
    assert server.requests[0][2]["Authorization"] == "Bearer sk-env"


def test_stop_strings_beyond_four_apply_client_side(server: FakeServer) -> None:
    # The server sees only the first 4 stops (more would be a 400); "#" is the fifth and cuts here.
    stops = ("QQ", "RR", "SS", "TT", "#")
    out = backend(server).complete(["xyz"], SamplingParams(stop=stops))
    assert out == [["echo:xyz"]]
    assert server.requests[0][1]["stop"] == ["QQ", "RR", "SS", "TT"]


def test_stop_strings_applied_by_the_server_are_kept(server: FakeServer) -> None:
    out = backend(server).complete(["abcdef"], SamplingParams(stop=("cd",)))
    assert out == [["echo:ab"]]


def test_retries_after_429_with_retry_after(server: FakeServer) -> None:
    too_many = ("status", (429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}))
    server.plan = [too_many] * 3
    out = backend(server, backoff=60).complete(["p"], SamplingParams())  # Retry-After: 0 overrides backoff
    assert out == [["echo:p#0"]]
    assert len(server.requests) == 4


def test_retries_after_500(server: FakeServer) -> None:
    server.plan = [("status", (500, {}, b"internal error"))]
    assert backend(server).complete(["p"], SamplingParams()) == [["echo:p#0"]]
    assert len(server.requests) == 2


def test_retries_run_out(server: FakeServer) -> None:
    server.plan = [("status", (503, {}, {"error": {"message": "overloaded"}}))] * 5
    with pytest.raises(BackendError, match=r"after 3 attempts; last: HTTP 503: overloaded") as info:
        backend(server, max_retries=2).complete(["p"], SamplingParams())
    assert info.value.status == 503
    assert len(server.requests) == 3


def test_400_fails_at_once_with_the_server_message(server: FakeServer) -> None:
    server.plan = [
        ("status", (400, {}, {"error": {"message": "This model's maximum context length is 2048"}}))
    ]
    with pytest.raises(BackendError) as info:
        backend(server).complete(["p"], SamplingParams())
    message = str(info.value)
    assert "HTTP 400" in message and "maximum context length is 2048" in message
    assert "/completions" in message and "openai:tiny@" in message
    assert info.value.status == 400
    assert len(server.requests) == 1


def test_long_error_bodies_are_truncated(server: FakeServer) -> None:
    server.plan = [("status", (422, {}, b"x" * 10_000))]
    with pytest.raises(BackendError) as info:
        backend(server).complete(["p"], SamplingParams())
    assert len(str(info.value)) < 600 and str(info.value).endswith("...")


def test_timeout_raises_backend_error(server: FakeServer) -> None:
    server.plan = [("hang", None)]
    with pytest.raises(BackendError, match="timeout"):
        backend(server, timeout=0.2).complete(["p"], SamplingParams())
    assert len(server.requests) == 1  # a stalled server is not asked again


def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    b = OpenAIBackend("tiny", f"http://127.0.0.1:{port}/v1", max_retries=2, backoff=0.001)
    with pytest.raises(BackendError, match=r"after 3 attempts; last: connection error"):
        b.complete(["p"], SamplingParams())


def test_malformed_response_is_a_backend_error(server: FakeServer) -> None:
    server.plan = [("status", (200, {}, b"<html>not json</html>"))]
    with pytest.raises(BackendError, match="malformed response"):
        backend(server).complete(["p"], SamplingParams())


def test_server_rejecting_n_gets_repeated_n1_requests(server: FakeServer) -> None:
    server.reject_n = True
    b = backend(server)
    out = b.complete(["a", "b"], SamplingParams(n=3, temperature=1.0, seed=7))
    assert out == [[f"echo:{p}#0~s{7 + k}" for k in range(3)] for p in "ab"]
    assert sorted(body["n"] for _, body, _ in server.requests) == [1] * 6 + [3, 3]
    server.requests.clear()
    b.complete(["c"], SamplingParams(n=2, temperature=1.0))  # remembered: no n > 1 asked again
    assert [body["n"] for _, body, _ in server.requests] == [1, 1]


def test_fewer_choices_are_topped_up(server: FakeServer) -> None:
    server.max_choices = 2
    out = backend(server).complete(["a"], SamplingParams(n=4, temperature=1.0, seed=0))
    assert out == [["echo:a#0~s0", "echo:a#1~s0", "echo:a#0~s2", "echo:a#0~s3"]]


def test_a_real_client_error_is_not_mistaken_for_an_n_rejection(server: FakeServer) -> None:
    bad = ("status", (400, {}, {"error": {"message": "prompt too long"}}))
    server.plan = [bad, bad]
    with pytest.raises(BackendError, match="prompt too long"):
        backend(server).complete(["a"], SamplingParams(n=2, temperature=1.0))


def test_chat(server: FakeServer) -> None:
    conversations = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "second"}],
    ]
    out = backend(server).chat(conversations, SamplingParams(n=2, temperature=0.5))
    assert out == [["chat:ello there#0", "chat:ello there#1"], ["chat:second#0", "chat:second#1"]]
    path, body, _ = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] in conversations


def test_load_backend_spec(server: FakeServer) -> None:
    b = load_backend(f"openai:m@{server.url}", api_key="", backoff=0.001)
    assert b.name == f"openai:m@{server.url}"
    assert b.complete(["xyz"], SamplingParams()) == [["echo:xyz#0"]]
    assert server.requests[0][1]["model"] == "m"


@pytest.mark.parametrize("spec_prefix, options", [("openai-chat", {}), ("openai", {"mode": "chat"})])
def test_chat_mode_sends_prompts_as_user_messages(
    server: FakeServer, spec_prefix: str, options: dict
) -> None:
    b = load_backend(f"{spec_prefix}:m@{server.url}", **options)
    assert b.complete(["xyz"], SamplingParams()) == [["chat:xyz#0"]]
    path, body, _ = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "xyz"}]


def test_empty_batch_sends_nothing(server: FakeServer) -> None:
    assert backend(server).complete([], SamplingParams()) == []
    assert server.requests == []


def test_min_p_is_sent_only_when_asked_for(server: FakeServer) -> None:
    backend(server).complete(["a"], SamplingParams(temperature=0.7))
    backend(server).complete(["a"], SamplingParams(temperature=0.7, min_p=0.05))
    (_, plain, _), (_, with_min_p, _) = server.requests
    assert "min_p" not in plain  # OpenAI's own API refuses fields it does not know
    assert with_min_p["min_p"] == 0.05
