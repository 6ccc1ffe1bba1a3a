"""Review of FIM in pretraining and at inference: FIM per file inside repository-level documents
(`train.data`), the FIM prompt's prefix/suffix budget (`models.completion._fit`), and a time budget that
cannot hold the warmup (`train.budget`, `train.pretrain`)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from codefoundry.data.packing import RepoFile, encode_pieces, repo_pieces  # noqa: E402
from codefoundry.data.shards import write_shards  # noqa: E402
from codefoundry.models import completion  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.vocab_bytes import token_bytes  # noqa: E402
from codefoundry.train.data import DataConfig, PretrainData, fim_sentinels  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return cft.train(cft.default_corpus()[:40], vocab_size=512, out=tmp_path_factory.mktemp("tok"))


def _file_text(r: int, i: int) -> str:
    # ASCII only and no word ending in "py", so that a path's tail is never a run of any file's text
    return "".join(
        f"def f_{r}_{i}_{k}(x, y):\n    total = x * {k + 1} + y\n    return total - {i}\n\n" for k in range(3)
    )


# repositories of small files (about 100 tokens each): a 128-token window nearly always crosses a marker
REPOS = {
    f"org/r{r}": [RepoFile(f"src/pkg_{r}/sub_{i}/module_{i}_helpers.py", _file_text(r, i)) for i in range(6)]
    for r in range(10)
}
PATHS = [f.path for files in REPOS.values() for f in files]
TEXTS = [f.text.encode() for files in REPOS.values() for f in files]


@pytest.fixture(scope="module")
def shards(tok, tmp_path_factory):
    """(repo-layout shards, file-layout shards) of the same files."""
    plain = cft.plain_text_copy(tok)
    repo_dir, file_dir = tmp_path_factory.mktemp("repo"), tmp_path_factory.mktemp("file")
    write_shards(
        [encode_pieces(plain, repo_pieces(name, files)) for name, files in REPOS.items()],
        repo_dir,
        tok,
        shard_tokens=1 << 20,
    )
    write_shards([f.text for files in REPOS.values() for f in files], file_dir, tok, shard_tokens=1 << 20)
    return repo_dir, file_dir


def _data(source, tok, **kw) -> PretrainData:
    return PretrainData(DataConfig(str(source), **{"seq_len": 128, "holdout": 0.0, **kw}), tok)


def _rows(d: PretrainData, steps: int, batch: int = 8) -> list[list[int]]:
    rows = []
    for step in range(steps):
        x, y = d.batch(step, 0, batch)
        rows += torch.cat([x, y[:, -1:]], dim=1).tolist()
    return rows


def _fim_share(tok, rows: list[list[int]]) -> float:
    """The share of the files' texts (those that start inside a row, after their path line) that are FIM
    examples."""
    table, pre, file_sep = token_bytes(tok), tok.token_to_id(cft.FIM_PREFIX), tok.token_to_id(cft.FILE_SEP)
    starts = []
    for row in rows:
        for k in (k for k, t in enumerate(row) if t == file_sep):
            k += 1
            while k < len(row) and b"\n" not in table[row[k]]:
                k += 1
            if k + 1 < len(row):
                starts.append(row[k + 1] == pre)
    assert len(starts) > 150, len(starts)
    return sum(starts) / len(starts)


def test_repository_documents_get_fim_per_file_at_the_file_layouts_rate(tok, shards):
    """A window piece holding a `<|file_sep|>` was never turned into FIM: with files this small, no file
    of a repository document was (0 of ~190 here; measured on 300 stdlib files of at most 4 kB, seq_len
    1024: 14% of rows had FIM against 73% with the file layout; now 72%). Now each file's text is a FIM
    example with probability fim_rate, as each document of the file layout is."""
    repo_dir, file_dir = shards
    pre = tok.token_to_id(cft.FIM_PREFIX)
    repo_rows = _rows(_data(repo_dir, tok, fim_rate=0.5), steps=40)
    per_file = _fim_share(tok, repo_rows)
    assert abs(per_file - 0.5) < 0.1, per_file
    # rows with FIM: a little fewer than with the file layout, as paths take room from the files' text
    file_rows = _rows(_data(file_dir, tok, fim_rate=0.5), steps=40)
    with_fim = {
        n: sum(pre in r for r in rows) / len(rows) for n, rows in (("repo", repo_rows), ("file", file_rows))
    }
    assert with_fim["repo"] > 0.75 * with_fim["file"], with_fim


def _fim_runs(tok, row: list[int]):
    """(prefix+middle+suffix bytes, the token after the EOT that ends the middle, None when the row ends
    first) of each FIM example in `row`."""
    pre, mid, suf = fim_sentinels(tok)
    eot = tok.token_to_id(cft.EOT)
    markers = {tok.token_to_id(cft.FILE_SEP), tok.token_to_id(cft.REPO_NAME)}
    table = token_bytes(tok)
    for i in (k for k, t in enumerate(row) if t == pre):
        if mid not in row[i:]:
            continue  # the row ends in the example's prefix or suffix
        i_mid = row.index(mid, i)
        end = row.index(eot, i_mid) if eot in row[i_mid:] else len(row)
        assert not markers & set(row[i:end]), "a marker inside a FIM example"
        i_suf = row.index(suf, i)
        p, s, m = row[i + 1 : i_suf], row[i_suf + 1 : i_mid], row[i_mid + 1 : end]
        text = b"".join(table[t] for t in [*p, *m, *s])  # SPM: P is empty here, M holds P and M
        yield text, row[end + 1] if end + 1 < len(row) else None


def test_markers_and_paths_stay_intact_and_each_middle_ends_with_an_eot(tok, shards):
    """Every file's text in the window is rearranged, never a marker or a path (also when the window starts
    inside a path); each middle is followed by <|endoftext|>, as `completion.complete` stops a middle,
    also when the repository's next file follows."""
    repo_dir, _ = shards
    d = _data(repo_dir, tok, fim_rate=1.0)
    table = token_bytes(tok)
    file_sep, repo_name = tok.token_to_id(cft.FILE_SEP), tok.token_to_id(cft.REPO_NAME)
    pre = tok.token_to_id(cft.FIM_PREFIX)
    n_fim = next_file = started_in_path = 0
    for row in _rows(d, steps=12):
        for text, after in _fim_runs(tok, row):
            assert any(text in t for t in TEXTS), text  # one run of one file's text, no path in it
            n_fim += 1
            next_file += after == file_sep
        for k in (k for k, t in enumerate(row) if t == file_sep):
            line = b"".join(table[t] for t in row[k + 1 :]).decode("utf-8", "replace")
            if "\n" in line:
                assert line.split("\n", 1)[0] in PATHS  # the path whole, right after its marker
        head = b"".join(table[t] for t in row[:12]).decode("utf-8", "replace").split("\n", 1)[0]
        if row[0] not in (file_sep, repo_name) and head.endswith("_helpers.py"):
            started_in_path += 1
            assert row[0] != pre  # the rest of the path stays as it is
    assert n_fim > 100 and next_file > 10 and started_in_path > 0, (n_fim, next_file, started_in_path)


def test_repository_fim_batches_are_a_pure_function_of_their_arguments(tok, shards):
    """Resuming reopens the data: a fresh reader must give the same batch for (seed, step, micro, rank);
    the look-back at a window's start reads only the stream."""
    repo_dir, _ = shards
    a, b = _data(repo_dir, tok, fim_rate=0.5), _data(repo_dir, tok, fim_rate=0.5)
    for step, micro in ((0, 0), (7, 1), (31, 0)):
        xa, ya = a.batch(step, micro, 4)
        xb, yb = b.batch(step, micro, 4)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(1, 0, 4)[0], a.batch(2, 0, 4)[0])
    other_seed = _data(repo_dir, tok, fim_rate=0.5, seed=1)
    assert not torch.equal(a.batch(1, 0, 4)[0], other_seed.batch(1, 0, 4)[0])


# ------------------------------------------------------------------ completion: the FIM prompt's budget
def _prompt_parts(tok, ids: list[int]) -> tuple[str, str]:
    pre, mid, suf = fim_sentinels(tok)
    assert ids[0] == pre and ids[-1] == mid
    i_suf = ids.index(suf)
    return tok.decode(ids[1:i_suf]), tok.decode(ids[i_suf + 1 : -1])


def test_a_long_docstring_leaves_the_def_line_in_a_512_token_prompt(tok):
    """Split evenly, the prefix had half the room: at seq_len 512 (384 prompt tokens beside 128 new ones,
    as `infill_eval.final_checks` asks) the `def` line of a function with a long docstring fell out."""
    words = "Return the weighted total of the values, counting each one once. "
    doc, suffix = "", "".join(f"\nresult_{i} = compute(values, {i})" for i in range(200))
    prefix = ""
    while len(tok.encode(prefix).ids) < 381 // 2 + 20:  # past the even split's half of the room
        doc += words
        prefix = f'import math\n\n\ndef compute(values, scale):\n    """{doc}"""\n'
    assert len(tok.encode(prefix).ids) < 381 * 3 // 4  # what the prefix may take now
    ids = completion.fim_prompt_ids(tok, prefix, suffix, budget=384)
    kept_prefix, kept_suffix = _prompt_parts(tok, ids)
    assert len(ids) == 384 and kept_prefix.endswith('"""\n') and "def compute(values, scale):" in kept_prefix
    assert kept_suffix.startswith("\nresult_0 = compute(values, 0)")  # the suffix keeps its start


def test_a_fim_prompt_gives_the_room_one_side_leaves_to_the_other(tok):
    long = "".join(f"x_{i} = {i}\n" for i in range(400))
    n = len(tok.encode(long).ids)
    both = completion.fim_prompt_ids(tok, long, long, budget=103)  # room 100: the suffix at most 32
    p, s = _prompt_parts(tok, both)
    assert len(both) == 103 and long.endswith(p) and long.startswith(s)
    assert both.index(fim_sentinels(tok)[2]) - 1 == 68  # prefix tokens: the room less the suffix's floor
    roomy = completion.fim_prompt_ids(tok, long, long, budget=403)  # room 400: the suffix's share is 100
    assert roomy.index(fim_sentinels(tok)[2]) - 1 == 300
    short_suffix = completion.fim_prompt_ids(tok, long, "y = 1\n", budget=103)
    assert len(short_suffix) == 103 and _prompt_parts(tok, short_suffix)[1] == "y = 1\n"
    short_prefix = completion.fim_prompt_ids(tok, "import os\n", long, budget=103)
    assert len(short_prefix) == 103 and _prompt_parts(tok, short_prefix)[0] == "import os\n"
    assert len(completion.fim_prompt_ids(tok, long, long)) == 2 * n + 3  # no budget: nothing cut


# ------------------------------------------------------------- a time budget that cannot hold the warmup
class Clock:
    """A clock the test drives: each look reads `tick` seconds later; from look `slow_from` on, `slow`."""

    def __init__(self, tick: float = 1.0, slow_from: int | None = None, slow: float = 1.0) -> None:
        self.now, self.looks, self.tick, self.slow_from, self.slow = 0.0, 0, tick, slow_from, slow

    def perf_counter(self) -> float:
        self.looks += 1
        late = self.slow_from is not None and self.looks >= self.slow_from
        self.now += self.slow if late else self.tick
        return self.now


def test_a_warmup_longer_than_the_budget_is_shortened_at_the_first_timed_steps(monkeypatch):
    """The budget was fitted only after the warmup: a 200-step warmup at 1 s a step ran 200 s of a 100 s
    budget. Now the steps are timed during the warmup too, and a warmup that cannot end in time is
    shortened to its asked share (200 of 1000) of the steps that fit."""
    from codefoundry.train import budget as B

    clock = Clock()
    monkeypatch.setattr(B, "time", clock)
    budget = B.TimeBudget(100.0, 1000, 0)
    fits = {}
    for step in range(1, 1000):
        clock.perf_counter()  # the step's second
        fit = budget.after_step(step, warmup=200, eval_every=0, elapsed_s=10.0 + clock.now)
        if fit is not None:
            fits[step] = fit
        if budget.fitted is not None and step >= budget.fitted:
            break
    assert list(fits) == [B.FIT_AFTER]
    assert budget.warmup == 200 * budget.fitted // 1000 < budget.fitted
    assert 10.0 + clock.now <= 100 * (1 - B.RESERVE) + 2  # within a step (two looks) of its share
    [note] = budget.report("completed", step, 200, budget.warmup)["notes"]
    assert f"could not hold the 200-step warmup at 2 s a step: warmup shortened to {budget.warmup}" in note


def _pretrain_cfg(corpus, tok_dir, out, **overrides):
    from codefoundry.train.pretrain import PretrainConfig

    base = dict(
        data=str(corpus), tokenizer=str(tok_dir), out=str(out), size="tiny", steps=1000, batch_size=2,
        seq_len=32, log_every=1, eval_every=0, save_every=0, eval_batches=1, progress=False,
        final_eval=False,
    )  # fmt: skip
    return PretrainConfig(**{**base, **overrides})


def test_a_budgeted_run_shortens_the_warmup_says_so_and_resumes_with_it(
    corpus, tok_dir, tmp_path, monkeypatch, capsys
):
    from dataclasses import replace

    from codefoundry.train import budget as B
    from codefoundry.train import pretrain as loop
    from codefoundry.train.pretrain import pretrain

    clock = Clock()
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(B, "time", clock)
    cfg = _pretrain_cfg(corpus, tok_dir, tmp_path, warmup=200, time_budget_s=400)
    summary = pretrain(cfg)
    assert summary["elapsed_s"] <= 400  # the warmup alone would have taken longer than the budget
    report, fitted = summary["time_budget"], summary["steps"]
    assert summary["step"] == fitted and B.FIT_AFTER < fitted < 200 and summary["stopped"] == "completed"
    assert report["warmup_asked"] == 200 and report["warmup"] == 200 * fitted // 1000
    err = [line for line in capsys.readouterr().err.splitlines() if "warmup shortened" in line]
    assert len(err) == 1 and err[0].startswith("codefoundry.train: warning: the budget (400 s)")
    lrs = [r["lr"] for r in (json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
           if "lr" in r]  # fmt: skip
    assert max(lrs) > 0.9 * cfg.lr and lrs[-1] < 0.12 * cfg.lr  # it reached its peak and decayed
    resumed = pretrain(replace(cfg, resume=True))
    assert resumed["steps"] == fitted and resumed["time_budget"]["warmup"] == report["warmup"]
    assert "will not reproduce" not in capsys.readouterr().err


def test_a_budget_spent_after_the_last_fit_stops_the_run_within_a_step(
    corpus, tok_dir, tmp_path, monkeypatch
):
    """Fitted once, the steps then ran four times slower: the run went on to the fitted count, far past
    the budget. Now it stops at the step that spends 1 - RESERVE / 2 of it, and the summary says why."""
    from codefoundry.train import budget as B
    from codefoundry.train import pretrain as loop
    from codefoundry.train.pretrain import pretrain

    clock = Clock(slow_from=400, slow=4.0)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(B, "time", clock)
    summary = pretrain(_pretrain_cfg(corpus, tok_dir, tmp_path, warmup=1, time_budget_s=600))
    assert summary["stopped"] == "time_budget" and summary["step"] < summary["steps"]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    *_, before, last = [r["elapsed_s"] for r in records if "lr" in r]
    # past the point it stops at by about a step (the check and the record look at the clock apart)
    assert 0 <= last - 600 * (1 - B.RESERVE / 2) <= 2 * (last - before), (before, last)
    assert any("stopped there" in n for n in summary["time_budget"]["notes"]), summary["time_budget"]


def test_two_ranks_take_rank_0s_shortened_warmup(corpus, tok_dir, tmp_path):
    """Under torchrun the fitted count and the shortened warmup are rank 0's on both ranks (a budget spent
    by the first timed step: the warmup is cut to its share of those steps and the run ends there)."""
    import os
    import subprocess
    import sys
    from dataclasses import asdict

    from codefoundry.train import budget as B

    cfg = _pretrain_cfg(corpus, tok_dir, tmp_path / "run", warmup=200, time_budget_s=1e-3, device="cpu")
    spec = tmp_path / "cfg.json"
    spec.write_text(json.dumps(asdict(cfg)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "codefoundry.train.pretrain", "--json", str(spec)]  # fmt: skip
    proc = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == summary["steps"] == B.FIT_AFTER
    assert summary["time_budget"]["warmup"] == 200 * B.FIT_AFTER // 1000
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    shortened = f"warmup shortened to {200 * B.FIT_AFTER // 1000} of the {B.FIT_AFTER} steps that fit"
    assert proc.stderr.count(shortened) == 1  # said once, by rank 0
    assert any("was spent" in note for note in summary["time_budget"]["notes"])  # and the overrun too
