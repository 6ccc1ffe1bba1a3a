"""Sources: directories, git revisions, JSONL/Parquet records and the default corpus, on inputs the tests
build with planted facts (skipped folders, a file too large, a second git revision, a malformed line)."""

import gzip
import json
import os
import subprocess

import pytest

from codefoundry.data import sources
from codefoundry.data.sources import (
    DirectorySource,
    DistributionSource,
    GitSource,
    RecordSource,
    SourceError,
    default_sources,
    iter_files,
)
from codefoundry.jsonl import RecordError


@pytest.fixture(autouse=True)
def _close_readers():
    yield
    sources.close_git_readers()


def write(root, rel, data):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# ---------------------------------------------------------------------------------------------------
# directories


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "proj"
    for rel in ("a.txt", "a/b.py", "a-b/c.py", "z.py", "pkg/sub/deep.c", "B.md"):
        write(root, rel, f"contents of {rel}\n")
    # Folders that hold no code of this project.
    for rel in (".git/config", "__pycache__/z.cpython-311.pyc", "node_modules/x/index.js", ".venv/lib/y.py",
                "pkg/site-packages/vendored.py", "lib/dist-packages/other.py"):  # fmt: skip
        write(root, rel, "skipped\n")
    write(root, "big.bin", b"x" * 2048)
    outside = write(tmp_path, "outside.py", "not ours\n")
    os.symlink(outside, root / "leaves_root.py")
    os.symlink(root / "z.py", root / "inside_link.py")
    os.symlink(root / "pkg", root / "pkg_link")  # a folder link: skipped (loops)
    return root


def test_directory_lists_sorted_paths_and_skips_foreign_folders(tree):
    src = DirectorySource(tree, max_bytes=1024)
    files = list(src.files())
    paths = [f.path for f in files]
    assert paths == sorted(paths)
    assert paths == [
        "B.md",
        "a-b/c.py",
        "a.txt",
        "a/b.py",
        "big.bin",
        "inside_link.py",
        "pkg/sub/deep.c",
        "z.py",
    ]
    assert {f.repo for f in files} == {"proj"}
    assert files[0].id == "proj:B.md" and files[0].source == "directory"
    assert files[3].read() == b"contents of a/b.py\n"
    assert files[3].locator == str(tree / "a" / "b.py")


def test_directory_reports_too_large_without_data(tree):
    big = next(f for f in DirectorySource(tree, max_bytes=1024).files() if f.path == "big.bin")
    assert big.dropped == "too_large" and big.size == 2048 and big.data is None
    kept = next(f for f in DirectorySource(tree, max_bytes=4096).files() if f.path == "big.bin")
    assert kept.dropped == ""


def test_directory_repo_name_and_site_root(tmp_path):
    site = tmp_path / "site-packages"
    write(site, "mod/x.py", "x = 1\n")
    assert DirectorySource(site, repo="named").repo == "named"
    assert [f.path for f in DirectorySource(site).files()] == ["mod/x.py"]  # a site root is not skipped
    with pytest.raises(SourceError, match="not a directory"):
        DirectorySource(tmp_path / "missing")


def test_iter_files_keeps_source_order_and_rejects_repo_clashes(tmp_path):
    a, b = tmp_path / "one", tmp_path / "two"
    write(a, "z.py", "1\n")
    write(b, "a.py", "2\n")
    ids = [f.id for f in iter_files([DirectorySource(a), DirectorySource(b)])]
    assert ids == ["one:z.py", "two:a.py"]
    with pytest.raises(SourceError, match="repo name 'one' is already used"):
        list(iter_files([DirectorySource(a), DirectorySource(b, repo="one")]))


def test_decode_policy():
    from codefoundry.data.langid import decode_text as decode

    assert decode(b"\xef\xbb\xbfprint(1)\n") == "print(1)\n"
    assert decode("héllo".encode()) == "héllo"
    assert decode("héllo".encode("latin-1")) is None
    assert decode(b"\xed\xa0\x80") is None  # an encoded surrogate is not strict UTF-8


# ---------------------------------------------------------------------------------------------------
# git


def git(repo, *args):
    cfg = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", "-C", str(repo), *cfg, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "widget"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, "src/app.py", "VERSION = 1\n")
    write(root, "README.md", "first\n")
    write(root, "old.txt", "removed later\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    first = git(root, "rev-parse", "HEAD")
    write(root, "src/app.py", "VERSION = 2\n")
    write(root, "src/new.py", "added\n")
    write(root, "big.dat", b"y" * 3000)
    os.symlink("README.md", root / "link.md")
    (root / "old.txt").unlink()
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "two")
    write(root, "uncommitted.py", "not in any revision\n")
    return root, first


def test_git_head_and_earlier_revision_differ(repo):
    root, first = repo
    head = {f.path: f for f in GitSource(root, max_bytes=2000).files()}
    assert list(head) == ["README.md", "big.dat", "src/app.py", "src/new.py"]  # no symlink, no worktree file
    assert head["src/app.py"].read() == b"VERSION = 2\n"
    assert head["big.dat"].dropped == "too_large" and head["big.dat"].size == 3000
    old = {f.path: f.read() for f in GitSource(root, revision=first).files()}
    assert old == {"README.md": b"first\n", "old.txt": b"removed later\n", "src/app.py": b"VERSION = 1\n"}
    assert GitSource(root, revision="HEAD~1").commit == first
    f = head["src/app.py"]
    assert f.repo == "widget" and f.id == "widget:src/app.py" and f.source == "git"
    assert f.locator.startswith("git:") and f.locator.endswith(":src/app.py")


def test_git_reads_through_one_process_per_repository(repo):
    root, _ = repo
    sources.close_git_readers()
    for f in GitSource(root).files():
        f.read()
    assert len([k for k in sources._READERS if k[0] == os.getpid()]) == 1


def test_git_bare_clone_and_origin_name(repo, tmp_path):
    root, _ = repo
    bare = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(root), str(bare)], check=True, capture_output=True)
    src = GitSource(bare)
    assert src.repo == "widget"  # the clone's origin URL ends in .../widget
    assert [f.path for f in src.files()] == ["README.md", "big.dat", "src/app.py", "src/new.py"]
    git(bare, "remote", "remove", "origin")
    assert GitSource(bare).repo == "mirror"
    git(root, "remote", "add", "origin", "git@example.com:org/gadget.git")
    assert GitSource(root).repo == "gadget"


def test_git_errors_name_repo_and_revision(repo, tmp_path):
    root, _ = repo
    with pytest.raises(SourceError, match=r"widget @ nope: revision 'nope' not found"):
        GitSource(root, revision="nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SourceError, match=r"plain @ HEAD: not a git repository"):
        GitSource(plain)


# ---------------------------------------------------------------------------------------------------
# records


def test_jsonl_records_ids_fields_and_declared_licence(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"content": "print(1)\n", "repo": "r1", "path": "a.py", "license": "MIT License"},
        {"text": "fn main() {}\n"},
        {"content": "x" * 50, "license": ["MIT", "Apache-2.0"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    files = list(RecordSource(path, max_bytes=40).files())
    assert [f.id for f in files] == [f"{path}#1", f"{path}#2", f"{path}#4"]
    assert (files[0].repo, files[0].path, files[0].license, files[0].read()) == (
        "r1",
        "a.py",
        "MIT",
        b"print(1)\n",
    )
    assert (files[1].repo, files[1].path, files[1].license) == ("corpus", "", "")
    assert files[2].dropped == "too_large" and files[2].license == "Apache-2.0 AND MIT"
    assert files[0].source == "jsonl"


def test_jsonl_gz_and_explicit_fields(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"body": "int main;", "name": "m.c", "project": "p"}) + "\n")
    src = RecordSource(path, text_field="body", path_field="name", repo_field="project")
    (only,) = src.files()
    assert (only.repo, only.path, only.read()) == ("p", "m.c", b"int main;")


@pytest.mark.parametrize(
    ("lines", "kwargs", "message"),
    [
        (['{"content": "a"}', "{not json"], {}, r"bad\.jsonl:2: not valid JSON"),
        (['{"content": "a"}', '{"body": "b"}'], {}, r"bad\.jsonl:2: record lacks 'content'"),
        (['{"content": 3}'], {}, r"bad\.jsonl:1: 'content' is int, expected a string"),
        (['{"content": "a", "repo": ["x"]}'], {}, r"bad\.jsonl:1: 'repo' is list"),
        (['{"content": "a"}'], {"path_field": "file"}, r"bad\.jsonl:1: record lacks 'file'"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, lines, kwargs, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=message):
        list(RecordSource(path, **kwargs).files())


def test_parquet_rows_in_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "docs.parquet"
    texts = [f"doc {i}\n" for i in range(7)]
    pq.write_table(pa.table({"text": texts, "path": [f"f{i}.py" for i in range(7)]}), path)
    files = list(RecordSource(path, batch_rows=3).files())  # three batches: 3 + 3 + 1 rows
    assert [f.read().decode() for f in files] == texts
    assert (
        [f.id for f in files][-1] == f"{path}#6" and files[2].path == "f2.py" and files[0].source == "parquet"
    )

    pq.write_table(pa.table({"content": ["ok", None]}), path)
    with pytest.raises(RecordError, match=r"docs\.parquet: row 1: record lacks 'content'"):
        list(RecordSource(path).files())
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(RecordError, match=r"docs\.parquet: no column 'content' \(columns: body\)"):
        list(RecordSource(path).files())


def test_record_source_rejects_other_suffixes(tmp_path):
    with pytest.raises(SourceError, match=r"notes\.csv: not a record file"):
        RecordSource(tmp_path / "notes.csv")


# ---------------------------------------------------------------------------------------------------
# the default corpus


def test_default_sources_stdlib_and_distributions():
    srcs = default_sources()
    stdlib = srcs[0]
    assert stdlib.repo == "cpython-stdlib"
    stdlib_paths = [f.path for f in stdlib.files()]
    assert "os.py" in stdlib_paths and "json/__init__.py" in stdlib_paths
    assert not any(p.startswith("site-packages/") or "/__pycache__/" in p for p in stdlib_paths)
    dists = {s.repo: s for s in srcs[1:]}
    assert all(isinstance(s, DistributionSource) for s in dists.values())
    assert "pytest" in dists and "_pytest/__init__.py" in dists["pytest"].paths
    claimed = [(s.root, p) for s in dists.values() for p in s.paths]
    assert len(claimed) == len(set(claimed))  # each file belongs to one distribution
    assert not any(p.startswith("../") or "__pycache__" in p for _, p in claimed)
    first = next(dists["pytest"].files())
    assert first.source == "site-packages" and first.id == f"pytest:{first.path}"
