"""codefoundry.sandbox: run untrusted programs isolated, limited, fast, with verdicts they cannot forge.

Public API: `execute(program, ...)` runs one program, `execute_many(programs, ...)` runs many in order
with a pool of warm fork-server workers (or Ray with `executor="ray"`); interrupted, it raises
`Interrupted`, which holds the results so far. See `zygote.py` for exactly what is isolated and what is
not.
"""

from codefoundry.sandbox.api import Interrupted, Program, execute, execute_many, shutdown
from codefoundry.sandbox.result import (
    ExecutionResult,
    Isolation,
    Judge,
    Limits,
    Status,
    TestOutcome,
)
from codefoundry.sandbox.runners import LANGUAGES

__all__ = [
    "LANGUAGES",
    "ExecutionResult",
    "Interrupted",
    "Isolation",
    "Judge",
    "Limits",
    "Program",
    "Status",
    "TestOutcome",
    "execute",
    "execute_many",
    "shutdown",
]
