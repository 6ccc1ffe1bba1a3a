"""Any OpenAI-compatible server (vLLM, llama.cpp's server, SGLang, OpenAI itself), with the standard library only.

`complete` posts to `{base_url}/completions`, `chat` to `{base_url}/chat/completions` (and so does
`complete` in chat mode, one user message per prompt). Each prompt is one request; up to `concurrency`
run at once and results keep the input order.

Failure policy, per request:
- connection errors, HTTP 429 and 5xx are retried `max_retries` times with exponential backoff and
  jitter, waiting as long as a `Retry-After` header asks instead when there is one;
- any other 4xx fails at once with a `BackendError` quoting the status and the server's message;
- a request that gets no answer within `timeout` seconds (a socket-level timeout: no bytes for that
  long) fails at once: a server that stalls for minutes is not helped by being asked again.

Servers that reject `n > 1` or answer with fewer choices than asked get repeated `n = 1` requests for
the missing samples; with a seed, the k-th sample asks for `seed + k`, so reruns reproduce. The API
takes at most 4 stop strings: the first 4 go to the server, and all of them are applied client-side.
No proxy settings are read: requests go straight to `base_url`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from codefoundry.models.backends.base import BackendError, Conversation, SamplingParams, truncate_at_stop

MAX_API_STOPS = 4  # the OpenAI API rejects more
_ERROR_EXCERPT = 300  # characters of a server's error body quoted in a BackendError


@dataclass(frozen=True)
class _Request:
    index: int  # which input (prompt or conversation) this request serves
    body: dict[str, Any]


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key: str | None = None,
        mode: str = "completion",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 600.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("completion", "chat"):
            raise ValueError(f"OpenAIBackend mode must be 'completion' or 'chat', got {mode!r}")
        if concurrency < 1:
            raise ValueError(f"OpenAIBackend concurrency must be >= 1, got {concurrency}")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OpenAIBackend base_url must look like http://HOST:PORT/v1, got {base_url!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.mode = mode
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.extra_body = dict(extra_body or {})
        self.name = f"{'openai-chat' if mode == 'chat' else 'openai'}:{model}@{self.base_url}"
        self._url = url
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._multi_n = True  # becomes False once the server is seen to reject n > 1

    # -- the Backend protocol -------------------------------------------------------------------

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        if isinstance(prompts, str):
            raise TypeError("complete takes a sequence of prompts, not one string")
        if self.mode == "chat":
            return self.chat([[{"role": "user", "content": p}] for p in prompts], params)
        bodies = [{"prompt": p} for p in prompts]
        return self._generate("/completions", bodies, params)

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[str]]:
        bodies = [
            {"messages": [{"role": m["role"], "content": m["content"]} for m in conv]}
            for conv in conversations
        ]
        return self._generate("/chat/completions", bodies, params)

    # -- batching and the n > 1 fallback ----------------------------------------------------------

    def _generate(self, path: str, bodies: list[dict[str, Any]], params: SamplingParams) -> list[list[str]]:
        results: list[list[str]] = [[] for _ in bodies]
        if not bodies:
            return results
        first_n = params.n if self._multi_n else 1
        first = [_Request(i, self._body(b, params, first_n, params.seed)) for i, b in enumerate(bodies)]
        answers = self._run_all(path, first, len(bodies), tolerate_client_errors=first_n > 1)
        rejected: BackendError | None = None
        for request, answer in zip(first, answers, strict=True):
            if isinstance(answer, BackendError):
                rejected = rejected or answer
            else:
                results[request.index] = answer[: params.n]

        # Top up every input that has fewer than n samples with n = 1 requests.
        extra = [
            _Request(i, self._body(b, params, 1, None if params.seed is None else params.seed + k))
            for i, b in enumerate(bodies)
            for k in range(len(results[i]), params.n)
        ]
        if extra:
            for request, answer in zip(extra, self._run_all(path, extra, len(bodies)), strict=True):
                assert not isinstance(answer, BackendError)  # not tolerated, so raised
                results[request.index].extend(answer)
            if rejected is not None:
                self._multi_n = False  # n = 1 worked where n > 1 was refused: stop asking for n > 1
        return [[truncate_at_stop(text, params.stop) for text in r] for r in results]

    def _body(self, base: dict[str, Any], params: SamplingParams, n: int, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            **base,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop[:MAX_API_STOPS])
        if seed is not None:
            body["seed"] = seed
        # vLLM's and SGLang's extension, sent only when asked for (OpenAI itself refuses it). Left out, it is
        # the server's default: vLLM's is the model's generation_config.json (`extra_body={"min_p": 0}`).
        if params.min_p > 0:
            body["min_p"] = params.min_p
        body.update(self.extra_body)
        return body

    def _run_all(
        self, path: str, requests: list[_Request], n_inputs: int, *, tolerate_client_errors: bool = False
    ) -> list[list[str] | BackendError]:
        """Each request's completions, in order; a 4xx is returned rather than raised when tolerated."""

        def one(request: _Request) -> list[str] | BackendError:
            try:
                return self._post(path, request, n_inputs)
            except BackendError as e:
                refused = e.status is not None and 400 <= e.status < 500 and e.status != 429
                if tolerate_client_errors and refused:
                    return e
                raise

        if len(requests) == 1 or self.concurrency == 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(one, r) for r in requests]
            try:
                return [f.result() for f in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # don't start requests whose batch already failed
                raise

    # -- one request, with retries -------------------------------------------------------------

    def _post(self, path: str, request: _Request, n_inputs: int) -> list[str]:
        what = f"{self.name}: POST {path} (input {request.index} of {n_inputs})"
        payload = json.dumps(request.body).encode()
        attempt = 0
        while True:
            status: int | None = None
            try:
                status, headers, raw = self._send(path, payload)
            except TimeoutError:
                raise BackendError(f"{what}: no answer within the {self.timeout:g} s timeout") from None
            except (OSError, http.client.HTTPException) as e:
                failure = f"connection error: {type(e).__name__}: {e}"
                retry_after = None
            else:
                if 200 <= status < 300:
                    return self._choices(what, raw, "messages" in request.body)
                failure = f"HTTP {status}: {_error_message(raw)}"
                if status != 429 and status < 500:
                    err = BackendError(f"{what} failed with {failure}")
                    err.status = status
                    raise err
                retry_after = _retry_after(headers.get("Retry-After"))
            if attempt >= self.max_retries:
                err = BackendError(f"{what} failed after {attempt + 1} attempts; last: {failure}")
                err.status = status
                raise err
            time.sleep(retry_after if retry_after is not None else self._delay(attempt))
            attempt += 1

    def _delay(self, attempt: int) -> float:
        # Exponential backoff with jitter, so that many clients refused at once don't return at once.
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def _send(self, path: str, payload: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        url = self._url
        connection_class = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        conn = connection_class(url.hostname, url.port, timeout=self.timeout)  # type: ignore[arg-type]
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            conn.request("POST", url.path.rstrip("/") + path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    @staticmethod
    def _choices(what: str, raw: bytes, is_chat: bool) -> list[str]:
        try:
            choices = sorted(json.loads(raw)["choices"], key=lambda c: c.get("index", 0))
            if is_chat:
                return [c["message"].get("content") or "" for c in choices]
            return [c["text"] for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            excerpt = raw[:_ERROR_EXCERPT].decode(errors="replace")
            raise BackendError(f"{what}: malformed response ({type(e).__name__}: {e}): {excerpt!r}") from None


def _error_message(raw: bytes) -> str:
    """The server's own error message ({"error": {"message": ...}} or {"message": ...}), else the body."""
    text = raw.decode(errors="replace")
    try:
        data = json.loads(text)
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message", error) if isinstance(error, dict) else error
        text = message if isinstance(message, str) else json.dumps(message)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_EXCERPT else text[:_ERROR_EXCERPT] + "..."


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
