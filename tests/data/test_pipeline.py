"""`data build` end to end on a corpus with planted facts: every stage finds what was planted, the
manifest counts match, re-runs are byte-identical whatever the worker count, and a run resumes."""

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("tokenizers")

from pipeline_kit import MIT, build_corpus  # noqa: E402

from codefoundry.data.finish import pieces_of  # noqa: E402
from codefoundry.data.output import read_documents  # noqa: E402
from codefoundry.data.pipeline import BuildConfig, build  # noqa: E402


def _config(planted, out, **overrides) -> BuildConfig:
    values = dict(sources=tuple(planted["sources"]), out=str(out), max_file_bytes=100_000, workers=1,
                  decontaminate=("humaneval",), vocab_size=400, chunk_files=5)  # fmt: skip
    values.update(overrides)
    return BuildConfig(**values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return build_corpus(root)


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    return build(_config(corpus, out), progress=False), out


def _stage(manifest, name):
    return next(s for s in manifest["stages"] if s["name"] == name)


def _drops(out):
    return [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]


def test_every_planted_fact_is_found_and_counted(corpus, first_run):
    manifest, out = first_run
    assert _stage(manifest, "source")["dropped"] == {"too_large": 1}
    language = _stage(manifest, "language")["dropped"]
    assert language["binary"] == 1 and language["not_utf8"] == 1 and language["generated:minified"] == 1
    licence = _stage(manifest, "license")["dropped"]
    assert licence == {"license:GPL-3.0-or-later": 2, "license:unknown": 1}  # COPYING itself too
    assert _stage(manifest, "secrets")["changed"] == {"aws_access_key": 1, "email": 1}
    assert _stage(manifest, "decontam")["dropped"] == {"contaminated:humaneval": 1}
    assert _stage(manifest, "exact_dedup")["dropped"] == {"exact_duplicate": 1}
    assert _stage(manifest, "near_dedup")["dropped"] == {"near_duplicate": 1}

    drops = {d["id"]: d for d in _drops(out)}
    assert drops["mitrepo:pkg/z_exact_copy.py"]["reason"] == "exact_duplicate of mitrepo:pkg/mod_0.py"
    assert drops["mitrepo:pkg/near_copy.py"]["reason"] == "near_duplicate of mitrepo:pkg/mod_1.py"
    assert drops["mitrepo:pkg/solutions.py"]["reason"] == "contaminated:humaneval"
    assert drops["mitrepo:pkg/huge.py"]["stage"] == "source"
    # every document the stages saw is either dropped once or kept
    docs = [d for p in sorted((out / "documents").glob("*.parquet")) for d in read_documents(p)]
    ids = [d.id for d in docs]
    assert set(corpus["kept"]) <= set(ids)
    assert not set(ids) & set(drops)
    assert len(ids) + len(drops) == _stage(manifest, "source")["docs_in"]
    assert _stage(manifest, "format")["docs_out"] == len(docs)


def test_secrets_are_redacted_in_the_output_and_licences_recorded(corpus, first_run):
    _, out = first_run
    docs = {d.id: d for p in sorted((out / "documents").glob("*.parquet")) for d in read_documents(p)}
    settings = docs["mitrepo:pkg/settings.py"]
    assert corpus["aws_key"] not in settings.text and "ops.lead@planted-corp.io" not in settings.text
    assert settings.meta["redactions"] == {"aws_access_key": 1, "email": 1}
    assert {d.license for d in docs.values()} == {"MIT"}
    assert docs["mitrepo:pkg/mod_2.py"].language == "python"


def test_token_shards_hold_every_output_document(first_run):
    from codefoundry.models import tokenizer as T

    manifest, out = first_run
    tok = T.load(out / "tokenizer")
    eot = tok.token_to_id(T.EOT)
    ids = np.concatenate([np.load(out / s["path"]) for s in manifest["tokens"]])
    assert ids.size == manifest["total_tokens"]
    texts = [
        tok.decode(d.tolist(), skip_special_tokens=False)
        for d in np.split(ids, np.where(ids == eot)[0] + 1)[:-1]
    ]
    docs = [d.text for p in sorted((out / "documents").glob("*.parquet")) for d in read_documents(p)]
    assert [t.removesuffix(T.EOT) for t in texts] == docs


def test_rerun_with_two_workers_is_byte_identical(corpus, first_run, tmp_path):
    manifest, _ = first_run
    again = build(_config(corpus, tmp_path, workers=2), progress=False)
    assert again["documents"] == manifest["documents"]
    assert again["tokens"] == manifest["tokens"]
    assert again["stages"] == manifest["stages"]


def test_resume_redoes_only_missing_chunks(corpus, first_run, tmp_path):
    manifest, _ = first_run
    cfg = _config(corpus, tmp_path)
    build(cfg, progress=False)
    work = tmp_path / "work"
    chunks = sorted(work.glob("chunk_*.json"))
    assert len(chunks) > 2
    before = {p: p.stat().st_mtime_ns for p in work.glob("chunk_*.parquet")}
    chunks[1].unlink()  # as if the run had been killed while chunk 1 was being written
    again = build(cfg, progress=False)
    redone = [p for p in before if p.stat().st_mtime_ns != before[p]]
    assert [p.name for p in redone] == [chunks[1].with_suffix(".parquet").name]
    assert again["documents"] == manifest["documents"] and again["stages"] == manifest["stages"]


def test_repository_layout_orders_by_imports(corpus, tmp_path):
    from codefoundry.models.tokenizer import FILE_SEP, REPO_NAME

    src = tmp_path / "src" / "app"
    (src / "pkg").mkdir(parents=True)
    (src / "LICENSE").write_text(MIT)
    body = "\n".join(f"def f{i}(value):\n    return value * {i} + len(str(value))\n" for i in range(8))
    (src / "pkg" / "a_main.py").write_text("from pkg.z_util import f0\n" + body)
    (src / "pkg" / "z_util.py").write_text(body.replace("value", "item"))
    manifest = build(_config({"sources": [str(src)]}, tmp_path / "out", layout="repo", decontaminate=()),
                     progress=False)  # fmt: skip
    docs = [d for p in sorted((tmp_path / "out" / "documents").glob("*.parquet")) for d in read_documents(p)]
    assert len(docs) == 1 and manifest["stages"][-1]["docs_out"] == 1
    doc = docs[0]
    assert doc.meta["files"].index("pkg/z_util.py") < doc.meta["files"].index("pkg/a_main.py")
    assert doc.text.startswith(f"{REPO_NAME}app\n{FILE_SEP}")
    assert [p[0] for p in pieces_of(doc)] == [REPO_NAME] + [FILE_SEP] * len(doc.meta["files"])


def test_ray_data_backend_writes_the_same_shards(corpus, first_run, tmp_path):
    ray = pytest.importorskip("ray")
    manifest, _ = first_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        again = build(_config(corpus, tmp_path, backend="ray", workers=2), progress=False)
    finally:
        ray.shutdown()
    assert again["documents"] == manifest["documents"]
    assert again["tokens"] == manifest["tokens"]
    assert again["stages"] == manifest["stages"]


def test_records_and_git_sources(tmp_path):
    import subprocess

    records = tmp_path / "docs.jsonl"
    body = "\n".join(f"def g{i}(n):\n    return [k * {i} for k in range(n)]\n" for i in range(6))
    records.write_text(
        json.dumps({"content": body, "repo": "acme/tool", "path": "tool.py", "license": "Apache-2.0"}) + "\n"
        + json.dumps({"content": body.replace("g", "h"), "repo": "acme/gpl", "path": "x.py", "license": "GPL-2.0-only"}) + "\n"
    )  # fmt: skip
    repo = tmp_path / "gitrepo"
    repo.mkdir()
    (repo / "LICENSE").write_text(MIT)
    (repo / "lib.py").write_text(body.replace("g", "first_"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (repo / "lib.py").write_text(body.replace("g", "second_"))
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    cfg = BuildConfig(sources=(str(records), f"{repo}@HEAD~1"), out=str(tmp_path / "out"), workers=1,
                      decontaminate=(), vocab_size=300)  # fmt: skip
    manifest = build(cfg, progress=False)
    docs = {
        d.id: d for p in sorted((tmp_path / "out/documents").glob("*.parquet")) for d in read_documents(p)
    }
    assert docs[f"{records}#1"].license == "Apache-2.0" and f"{records}#2" not in docs
    assert "first_0" in docs["gitrepo:lib.py"].text and docs["gitrepo:lib.py"].license == "MIT"
    assert any(i.startswith("git:") for i in manifest["inputs"])


def test_cli_prints_the_stage_table_and_rejects_bad_input(corpus, tmp_path, capsys):
    from codefoundry.cli import main

    args = ["data", "build", *corpus["sources"], "--out", str(tmp_path / "o"), "--workers", "1",
            "--decontaminate", "humaneval", "--vocab-size", "400", "--max-file-bytes", "100000", "--quiet"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "near_dedup" in out and "contaminated:humaneval 1" in out and "Parquet shard" in out

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x = 1\\n"}\n{not json\n')
    # decontaminate against the built-in set only: without the MBPP files (a bare clone) the default list
    # adds its own warning line, and this checks the source error alone
    quiet = ["--decontaminate", "builtin", "--quiet"]
    assert main(["data", "build", str(bad), "--out", str(tmp_path / "b"), *quiet]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:2" in err
    assert main(["data", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "c"), *quiet]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["data", "build", "--layout", "tree", "--out", str(tmp_path / "d")]) == 2
    assert "layout='tree'" in capsys.readouterr().err


def test_filter_settings_file_and_lsh_bands_reach_the_stages(corpus, tmp_path):
    settings = tmp_path / "filters.json"
    settings.write_text(json.dumps({"per_language": {"python": {"min_lines": 100_000}}}))
    manifest = build(_config(corpus, tmp_path / "out", filters=str(settings), dedup_bands=16, decontaminate=()),
                     progress=False)  # fmt: skip
    quality = _stage(manifest, "quality")
    kept = [d for p in sorted((tmp_path / "out/documents").glob("*.parquet")) for d in read_documents(p)]
    assert quality["dropped"]["too_short"] >= len(corpus["kept"])
    assert all(d.language != "python" for d in kept)
    settings.write_text(json.dumps({"max_line_lenght": 5}))
    with pytest.raises(ValueError, match=r"--filters .*filters.json: .*max_line_lenght"):
        build(_config(corpus, tmp_path / "bad", filters=str(settings)), progress=False)
