"""The data-stage subcommand: `codefoundry data build [SOURCE ...] [--option value ...]`.

The options are the fields of `codefoundry.data.pipeline.BuildConfig`; sources are positional (none =
the running interpreter's standard library and site-packages)."""

from __future__ import annotations

import argparse
import dataclasses

from codefoundry.cli_options import add_dataclass_options

HELP = {
    "out": "output directory: documents/*.parquet, tokens/*.npy, tokenizer/, manifest.json, report.md",
    "languages": "comma-separated languages to keep (default: every language identified)",
    "licenses": "comma-separated SPDX ids allowed (default: the permissive list)",
    "keep_unknown_license": "keep files whose licence could not be determined",
    "redact": "replace secrets and PII with placeholders",
    "decontaminate": "benchmarks whose problems and solutions are removed from the data",
    "decontam_files": "extra files (JSONL of problems, or source files) to decontaminate against",
    "decontam_ngram": "shared n-gram length (tokens) that marks a document as contaminated",
    "dedup_threshold": "MinHash Jaccard threshold for near-duplicates",
    "dedup_bands": "LSH bands (rows = num-perm / bands; 0 = chosen for the threshold)",
    "filters": 'a JSON file of quality-filter settings, e.g. {"max_line_length": 2000, '
    '"per_language": {"markdown": {"min_lines": 1}}}',
    "layout": "file (one document per file) or repo (a repository's files in import order)",
    "tokenizer": "tokenizer for the token shards (default: train a BPE on the curated documents)",
    "workers": "worker processes (0 = one per core)",
    "backend": "local (process pool) or ray (Ray Data)",
}


def _build(args: argparse.Namespace) -> int:
    from codefoundry.cli import UsageError
    from codefoundry.data.pipeline import BuildConfig, build

    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(BuildConfig)}
    values["sources"] = tuple(args.sources)
    try:
        config = BuildConfig(**{k: v for k, v in values.items() if v is not None})
        manifest = build(config, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    print(manifest["table"])
    docs = sum(1 for _ in manifest["documents"])
    print(
        f"{manifest['stages'][-1]['docs_out']:,} documents in {docs} Parquet shard(s), "
        f"{manifest['total_tokens']:,} tokens in {len(manifest['tokens'])} token shard(s) "
        f"in {manifest['wall_s']:.0f}s -> {config.out} (manifest.json, report.md, dropped.jsonl)"
    )
    return 0


def register(stages: argparse._SubParsersAction, argv: list[str]) -> None:
    """Add `data build`; its options (BuildConfig's fields) are built only when `data` is the command, so
    other stages start without importing the data package."""
    data = stages.add_parser("data", help="curate code data into Parquet and token shards")
    cmds = data.add_subparsers(dest="command", required=True)
    b = cmds.add_parser("build", help="sources -> filters -> dedup -> decontamination -> shards")
    b.add_argument(
        "sources",
        nargs="*",
        help="directories, git repositories (DIR or DIR@REVISION), .jsonl/.parquet document files "
        "(default: this Python's standard library and site-packages)",
    )
    if argv[:1] == ["data"]:
        from codefoundry.data.pipeline import BuildConfig

        add_dataclass_options(b, BuildConfig, help_texts=HELP, aliases={}, skip=("sources",))
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)
