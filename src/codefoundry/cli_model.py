"""The model-stage subcommands of `codefoundry`: `pretrain`, `export hf`, `import hf`, `generate`.

`pretrain`'s options are the fields of `PretrainConfig` (its typed signature is the config): each field
`name_x` is `--name-x`, booleans take `--flag/--no-flag`, and the issue's short names (`--mtp`, `--moe`) are
aliases. `--json CONFIG` reads the fields from a JSON object instead (options given as well win). Under
`torchrun`, `python -m torch.distributed.run --nproc_per_node N -m codefoundry.cli pretrain ...` runs
data-parallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from codefoundry.cli_options import add_dataclass_options

ALIASES = {"mtp_depth": ["--mtp"], "moe_experts": ["--moe"]}
HELP = {
    "data": "a directory of source files (tokenized on the fly) or token shards (*.npy)",
    "tokenizer": "a tokenizer directory (from `codefoundry tokenizer train`)",
    "out": "output directory: checkpoint/, metrics.jsonl, tb/, loss.png, summary.json",
    "size": "named model size (tiny, mini, 10m, small, 100m, 300m, 1b)",
    "shape": "a model shape dim,n_layers,n_heads,n_kv_heads instead of a named size",
    "fim_rate": "fraction of documents turned into fill-in-the-middle examples",
    "fim_line_rate": "fraction of FIM examples split at line starts, the middle whole lines (the rest at any "
    "character)",
    "mtp_depth": "multi-token-prediction depth D (0 = none)",
    "moe_experts": "experts per mixture-of-experts layer (0 = dense)",
    "moe_top_k": "experts each token is routed to (at most --moe)",
    "optimizer": "adamw, or muon (Muon for the blocks' matrices, AdamW for embeddings and norms; one --lr)",
    "resume": "continue from OUT/checkpoint",
    "time_limit_s": "stop cleanly (checkpoint + report) after this many seconds",
    "time_budget_s": "fit the run into this many seconds: after the warmup (sooner, shortening the warmup, "
    "where the budget cannot hold it), --steps is lowered to what the measured step time leaves room for "
    "(8%% kept for evaluations and checks), and the cosine ends there",
    "dtype": "auto (bf16 autocast where the hardware multiplies bf16 natively: CUDA, CPUs with AVX512-BF16 "
    "or AMX; else fp32), fp32 or bf16",
}


def _usage_error(message: str) -> Exception:
    from codefoundry.cli import UsageError

    return UsageError(message)


def _input_error(e: ValueError | OSError) -> Exception:
    """`e` as a one-line UsageError. An OSError the system raised (a metrics.jsonl that is a directory, a
    full disk) reads "FILE: why"; it was a traceback. One raised with a message of its own keeps it."""
    if isinstance(e, OSError) and e.errno is not None and e.filename is not None:
        return _usage_error(f"{e.filename}: {e.strerror}")
    return _usage_error(str(e))


def _pretrain(args: argparse.Namespace) -> int:
    from codefoundry.train.pretrain import PretrainConfig, pretrain
    from codefoundry.train.typed_config import config_from_json, required_fields

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    given = {k: v for k, v in values.items() if v is not None}
    try:
        if args.json_config:  # the file's fields, the options given on the command line on top
            cfg = config_from_json(PretrainConfig, args.json_config, given)
        else:
            missing = [f"--{f.replace('_', '-')}" for f in required_fields(PretrainConfig) if f not in given]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or --json CONFIG with those fields)")
            cfg = PretrainConfig(**given)
    except (TypeError, ValueError) as e:  # TypeError: the type check's (`--betas 0.9` reads as a 1-tuple)
        raise _usage_error(str(e)) from None
    try:
        summary = pretrain(cfg)
    except (ValueError, OSError) as e:
        raise _input_error(e) from None
    if "rank" not in summary:  # rank 0's full summary; under torchrun the others return a short one
        print(_pretrain_line(summary))
    # A Ctrl-C the run honoured (checkpoint and summary written) still ends as an interrupt does, on
    # every rank.
    return 130 if summary.get("stopped") == "interrupted" else 0


def _pretrain_line(s: dict[str, Any]) -> str:
    def num(value: float | None, spec: str) -> str:  # None: no held-out data, or no step ran this session
        return "n/a" if value is None else format(value, spec)

    parts = [
        f"{s['stopped']} at step {s['step']}/{s['steps']}",
        f"val_loss {num(s['val_loss'], '.4f')} (unigram baseline {num(s['unigram_loss'], '.4f')})",
        f"{s['tokens']:,} tokens in {s['wall_s']:.0f}s ({num(s['tokens_per_s'], '.0f')} tok/s)",
    ]
    if isinstance(s.get("fim_exact_match"), dict):
        line = s.get("fim_line_match")
        single = f" ({line['exact_match']:.3f} on single lines)" if isinstance(line, dict) else ""
        parts.append(f"FIM exact match {s['fim_exact_match']['exact_match']:.3f}{single}")
    if isinstance(s.get("syntax_valid"), dict):
        parts.append(f"syntax-valid bodies {s['syntax_valid']['syntax_valid']:.3f}")
    return "; ".join(parts) + f" -> {s['checkpoint']} (summary.json beside it)"


def _export_hf(args: argparse.Namespace) -> int:
    from codefoundry.models.hf import export_hf

    try:
        report = export_hf(args.ckpt, args.out, allow_dropless=args.allow_dropless)
    except (ValueError, OSError) as e:
        raise _input_error(e) from None
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    from codefoundry.models.hf_import import import_hf

    try:
        model = import_hf(args.src, args.out, max_seq_len=args.max_seq_len)
    except (ValueError, OSError) as e:
        raise _input_error(e) from None
    print(f"imported {model.num_params():,} parameters ({model.cfg.n_layers} layers) -> {args.out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from codefoundry.models.completion import generate_command

    try:
        text = generate_command(
            args.ckpt, args.prompt, args.suffix, args.max_tokens, args.temperature, args.top_p, args.seed,
            stream=not args.no_stream, repetition_penalty=args.repetition_penalty, min_p=args.min_p,
        )  # fmt: skip
        if args.no_stream:
            sys.stdout.write(text)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `codefoundry generate ... | head`: `cli.main` says it in one line
        raise
    except (ValueError, OSError) as e:
        raise _input_error(e) from None
    return 0


def register(stages: argparse._SubParsersAction, argv: list[str]) -> None:
    """Add the model-stage subcommands. `pretrain`'s options come from `PretrainConfig`, which needs torch:
    they are built only when `pretrain` is the command, so the other stages never import torch."""
    pre = stages.add_parser("pretrain", help="pretrain a code model (NTP + FIM + MTP; dense or MoE)")
    if argv[:1] == ["pretrain"]:
        from codefoundry.train.pretrain import PretrainConfig

        # --data, --tokenizer and --out may come from --json instead: _pretrain checks them
        add_dataclass_options(pre, PretrainConfig, help_texts=HELP, aliases=ALIASES, enforce_required=False)
    pre.add_argument(
        "--json", dest="json_config", metavar="CONFIG",
        help="a JSON object of these options' fields (data, tokenizer, out, steps, ...); options given as "
        "well override it",
    )  # fmt: skip
    pre.set_defaults(func=_pretrain)

    ex = stages.add_parser("export", help="export a checkpoint to another format")
    ex_cmds = ex.add_subparsers(dest="command", required=True)
    hf = ex_cmds.add_parser("hf", help="write a Hugging Face checkpoint that transformers loads")
    hf.add_argument("ckpt", help="a codefoundry checkpoint directory")
    hf.add_argument("out", help="the output directory")
    hf.add_argument(
        "--allow-dropless",
        action="store_true",
        help="export an MoE trained with a capacity factor as dropless (HF classes never drop tokens)",
    )
    hf.set_defaults(func=_export_hf)

    im = stages.add_parser("import", help="import a checkpoint from another format")
    im_cmds = im.add_subparsers(dest="command", required=True)
    imhf = im_cmds.add_parser("hf", help="convert a Hugging Face Llama/Qwen2/Qwen2-MoE/Mixtral checkpoint")
    imhf.add_argument("src", help="a Hugging Face checkpoint directory (safetensors)")
    imhf.add_argument("out", help="the codefoundry checkpoint directory to write")
    imhf.add_argument("--max-seq-len", type=int, help="context length (default: the checkpoint's)")
    imhf.set_defaults(func=_import_hf)

    gen = stages.add_parser("generate", help="complete a prompt (or fill in the middle) with a checkpoint")
    gen.add_argument("ckpt", help="a codefoundry checkpoint directory")
    gen.add_argument("--prompt", required=True, help="the text before the completion")
    gen.add_argument("--suffix", help="the text after it: fill in the middle")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument(
        "--min-p", type=float, default=0.0,
        help="drop tokens less likely than this times the most likely one, after temperature (0 = off)",
    )  # fmt: skip
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--repetition-penalty", type=float, default=1.0,
        help="divide (multiply, if negative) the logits of tokens already generated by this (1 = off); "
        "the prompt's tokens are not counted",
    )  # fmt: skip
    gen.add_argument("--no-stream", action="store_true", help="print the completion at the end only")
    gen.set_defaults(func=_generate)
