"""Repository-level documents inside a training window: which tokens are markers and their lines, and
which are a file's text, so that FIM (`train.data`) rearranges one file's text at a time.

A repository-level document (`codefoundry.data.packing`) is `<|repo_name|>repo` then `<|file_sep|>path`
and the text of each file. A header is a marker with the rest of its line, up to and including the first
token that holds a newline (byte-level BPE may have merged that newline with the text's first
indentation; the header keeps the whole token, so nothing is re-encoded). Headers stay as they are; a
file's text between two headers (or a header and the document's end) is a body, which FIM may split,
as repository-level code models (StarCoder2, Qwen2.5-Coder) keep the repository context intact and
apply FIM to a file's text. A window that starts inside a header line (in a path) is told so by looking
back at most LOOK_BACK tokens of the stream before it. A line that began further back than that (a path
longer than LOOK_BACK tokens, or a long line of a file's text) cannot be told apart, so its part in the
window is kept whole as a header: a path is never rearranged as file text, at the cost of leaving, now and
then, the start of a long line of text out of FIM.
"""

from __future__ import annotations

import numpy as np

from codefoundry.models.tokenizer import FILE_SEP, REPO_NAME
from codefoundry.models.vocab_bytes import token_bytes

LOOK_BACK = 256  # tokens read before a window to tell whether it starts inside a header line


class RepoSections:
    """Headers and bodies of document pieces for a tokenizer with `<|repo_name|>` / `<|file_sep|>`."""

    def __init__(self, tokenizer, eot: int) -> None:
        markers = [i for t in (REPO_NAME, FILE_SEP) if (i := tokenizer.token_to_id(t)) is not None]
        self.markers = np.array(markers, dtype=np.int64)
        self.bounds = np.array([eot, *markers], dtype=np.int64)  # what ends a header's look-back
        self.newline = np.array([b"\n" in b for b in token_bytes(tokenizer)], dtype=bool)  # (vocab,)

    def in_header(self, before: np.ndarray) -> bool:
        """Whether the tokens after `before` (the stream's tokens just before a window, LOOK_BACK of them
        unless the stream starts sooner) may continue a header line: the last marker, newline or EOT in
        `before` is a marker, or `before` holds none of them though it is LOOK_BACK long, so the line began
        before it (a long path's tail is a header line all the same)."""
        stops = np.flatnonzero(self.newline[before] | np.isin(before, self.bounds))
        if not len(stops):
            return len(before) >= LOOK_BACK  # shorter: it reaches the stream's start, where no line is open
        return bool(np.isin(before[stops[-1]], self.markers))

    def split(self, piece: np.ndarray, in_header: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """(header, body) pairs covering `piece` (a document piece: no EOT inside) in order; a header
        may be empty (the piece starts in a file's text), a body too (a repository's name line, or a
        window that ends in a path). `in_header`: the piece starts inside a header line."""
        marked = set(np.flatnonzero(np.isin(piece, self.markers)).tolist())
        starts = sorted({0, *marked})
        out = []
        for lo, hi in zip(starts, [*starts[1:], len(piece)], strict=True):
            section = piece[lo:hi]
            if not len(section):
                continue
            head = 0
            if lo in marked or (lo == 0 and in_header):
                newlines = np.flatnonzero(self.newline[section])
                head = int(newlines[0]) + 1 if len(newlines) else len(section)
            out.append((section[:head], section[head:]))
        return out
