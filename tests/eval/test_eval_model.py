"""`codefoundry eval --model` end to end against a real OpenAI-compatible HTTP server on 127.0.0.1."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from codefoundry.tasks import humaneval

CLI = [sys.executable, "-m", "codefoundry.cli"]


class _Model:
    """A deterministic 'model': for the i-th choice of a prompt it answers the canonical solution when
    (task index + i) is even, else a wrong body. Chat answers wrap the whole function in prose and a fence."""

    def __init__(self, problems):
        self.by_prompt = {p.prompt: (i, p) for i, p in enumerate(problems)}
        self.requests = 0
        self.lock = threading.Lock()

    def answer(self, prompt: str, choice: int, chat: bool) -> str:
        i, p = self.by_prompt[prompt]
        body = p.canonical_solution if (i + choice) % 2 == 0 else "    return None\n"
        if not chat:
            return body + "\n\ndef unrelated():\n    pass\n"  # the stop sequence must cut this off
        return f"Here is the solution:\n\n```python\n{p.prompt}{body}```\n\nIt works by iterating."


@pytest.fixture(scope="module")
def server():
    problems = humaneval.load()[:6]
    model = _Model(problems)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with model.lock:
                model.requests += 1
            chat = self.path.endswith("/chat/completions")
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            if chat:
                prompt = next(p for p in model.by_prompt if p in prompt)
            stops = body.get("stop") or []
            choices = []
            for i in range(body.get("n", 1)):
                text = model.answer(prompt, i, chat)
                for s in stops:
                    text = text.split(s)[0]
                choices.append({"index": i, "message": {"role": "assistant", "content": text}} if chat
                               else {"index": i, "text": text, "finish_reason": "stop"})  # fmt: skip
            data = json.dumps({"id": "x", "object": "list", "choices": choices}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", model
    httpd.shutdown()


@pytest.mark.parametrize("chat", [False, True])
def test_eval_with_an_openai_compatible_server(tmp_path, server, chat):
    url, model = server
    out = tmp_path / "out"
    args = [*CLI, "eval", "--task", "humaneval", "--limit", "6", "--model", f"openai:tiny@{url}", "--n", "2",
            "--k", "1,2", "--temperature", "0.8", "--out", str(out), "--quiet", *(["--chat"] if chat else [])]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "results.json").read_text())
    assert summary["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and all("unrelated" not in s["completion"] for s in samples)
    before = model.requests
    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert model.requests == before  # a finished run resumes from its logs without asking the model again
