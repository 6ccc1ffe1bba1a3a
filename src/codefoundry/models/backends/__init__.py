"""Model backends chosen by a short spec: `load_backend("openai:MODEL@http://HOST:PORT/v1")`.

| spec | backend | needs |
| --- | --- | --- |
| `openai:MODEL@BASE_URL` | any OpenAI-compatible server, `/completions` | the standard library |
| `openai-chat:MODEL@BASE_URL` | the same, `complete` sent as one-message chats | the standard library |
| `hf:PATH_OR_NAME` | a local transformers causal LM | torch, transformers |
| `replay:FILE` | recorded {"prompt", "completion"} JSONL | nothing |
| `cf:CKPT` | a codefoundry checkpoint directory | torch, tokenizers, safetensors |

Backend modules are imported only when their spec is loaded, so a missing optional dependency fails
only for the backend that needs it. `**options` go to the backend's constructor as keyword arguments.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from codefoundry.models.backends.base import Backend, BackendError, SamplingParams, truncate_at_stop

__all__ = [
    "Backend",
    "BackendError",
    "HFBackend",
    "OpenAIBackend",
    "ReplayBackend",
    "SamplingParams",
    "load_backend",
    "truncate_at_stop",
]

KNOWN_PREFIXES = ("openai", "openai-chat", "hf", "replay", "cf")
_LOCAL_MODULE = "codefoundry.models.backends.local"
_LAZY = {
    "HFBackend": "codefoundry.models.backends.hf",
    "OpenAIBackend": "codefoundry.models.backends.openai",
    "ReplayBackend": "codefoundry.models.backends.replay",
}


def __getattr__(name: str) -> Any:
    # Backend classes load on first use, like their specs (none imports an optional dependency at import).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_backend(spec: str, **options: Any) -> Backend:
    """The backend named by `spec` ("PREFIX:REST"), made with `options`."""
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in KNOWN_PREFIXES:
        known = ", ".join(f"{p}:" for p in KNOWN_PREFIXES)
        raise ValueError(f"unknown model backend spec {spec!r}: it must start with one of {known}")
    if not rest:
        raise ValueError(f"model backend spec {spec!r} names no model after {prefix!r}:")
    if prefix in ("openai", "openai-chat"):
        return _openai(prefix, rest, options)
    if prefix == "hf":
        from codefoundry.models.backends.hf import HFBackend

        return HFBackend(rest, **options)
    if prefix == "replay":
        from codefoundry.models.backends.replay import ReplayBackend

        if options:
            raise TypeError(f"replay backends take no options, got {sorted(options)}")
        return ReplayBackend.from_jsonl(rest)
    return _local(rest, options)


def _openai(prefix: str, rest: str, options: dict[str, Any]) -> Backend:
    from codefoundry.models.backends.openai import OpenAIBackend

    # MODEL@BASE_URL; model names may hold '@' themselves, so split where the URL starts.
    at = max(rest.find("@http://"), rest.find("@https://"))
    if at > 0:
        model, base_url = rest[:at], rest[at + 1 :]
        if "base_url" in options:
            raise ValueError(f"{prefix}:{rest} gives a base URL and so does the base_url option; keep one")
    else:
        model = rest
        base_url = options.pop("base_url", None) or os.environ.get(
            "OPENAI_BASE_URL", "https://api.openai.com/v1"
        )
    if prefix == "openai-chat":
        if options.get("mode", "chat") != "chat":
            raise ValueError(f"openai-chat:{rest} is chat mode, but mode={options['mode']!r} was given")
        options["mode"] = "chat"
    return OpenAIBackend(model, base_url, **options)


def _local(path: str, options: dict[str, Any]) -> Backend:
    local = importlib.import_module(_LOCAL_MODULE)  # needs torch and tokenizers: the `model` extra
    return local.LocalBackend(path, **options)
