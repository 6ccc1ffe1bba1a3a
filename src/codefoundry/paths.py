"""Output paths of the commands: made (or refused, in one line naming the path) before any work starts."""

from __future__ import annotations

from pathlib import Path


def output_dir(out: str | Path) -> Path:
    """`out` as a directory, created with its parents if missing; a ValueError naming it when a file is in
    the way or the system refuses. Entry points call it before any work, so a bad path fails at once."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (out, *out.parents) if p.exists()), out)
        if not blocker.is_dir():
            what = "" if blocker == out else f"{blocker} "
            raise ValueError(f"{out}: {what}is a file, not a directory") from None
        raise ValueError(f"{out}: cannot create the output directory ({e.strerror})") from None
    return out
