"""How a checkpoint fills in the middle of held-out functions: does its middle start where the prefix
stops, and does it stop where the suffix takes over?

For each held-out function (a body of 1-15 lines, as `codefoundry pretrain`'s final evaluation draws
them) the PSM prompt `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>` is built as `models.completion`
builds it (P keeps its end, S its start, the prefix first: `completion._fit`), and:

- teacher-forced: the loss (nats/token) of the real body's tokens, of its first three tokens, and of
  the `<|endoftext|>` after it (what ends a middle in training), with the model's probability of that
  end token;
- greedy: the middle the model writes (up to `--max-new` tokens): whether it ended with an end token
  before the budget, whether it reproduces the body exactly (trailing whitespace aside), and whether its
  first line does.

Bodies longer than `--max-body` tokens are left out, so that every scored end token fits the context.
With `--lines` the middle is one non-blank line of each body instead (`infill_eval.heldout_lines`, as
`codefoundry pretrain`'s single-line figure draws it), the rest of the body joined to prefix and suffix.

The same middles are also scored left to right, from the prefix alone (the same prefix text, no
suffix): the body's loss and the greedy first line. What the suffix buys (FIM loss below the left-to-right
one) says whether the model reads it; exact match alone is 0 at laptop scale either way.

Mind the token boundary. FIM training encodes prefix, middle and suffix apart, so the FIM side sees a
middle tokenized alone. Plain pretraining encodes a file whole, and its BPE merges the prefix's last
newline with the body's indentation (`"\n   "` is one token): a prefix ending in a lone newline token,
followed by the middle's own tokens, is a boundary left-to-right training never produces. `l2r_body_loss`
(kept for comparison with earlier runs) scores exactly that, and is biased against left to right. The fair
pair is `fim_nats_per_byte` against `l2r_joint_nats_per_byte`: prefix text and middle encoded together, as
pretraining does, scored from the first token that reaches into the middle, both in nats per byte
predicted (the two sides' tokens differ). The greedy left-to-right line is written from a healed prompt
(`generate.heal_prompts`, as `completion.complete` writes plain completions).

    python benchmarks/fim_middles.py runs/a/checkpoint runs/b/checkpoint --limit 200 [--lines]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F

from codefoundry.models import checkpoint, infill_eval
from codefoundry.models import tokenizer as cft
from codefoundry.models.completion import fim_prompt_ids
from codefoundry.models.generate import FIM_STOPS, decode, decode_after, generate, heal_prompts, token_bytes
from codefoundry.models.tokenizer import EOT, FIM_SUFFIX, plain_encoder, special_id

try:
    from syntax_failures import heldout_texts
except ModuleNotFoundError:  # run from another directory
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from syntax_failures import heldout_texts


def prompt_ids(tok, example, room: int) -> tuple[list[int], list[int]]:
    """(PSM prompt ids, body ids), prefix and suffix trimmed to `room` tokens as `complete` trims them."""
    prompt = fim_prompt_ids(tok, example.prefix, example.suffix, budget=room + 3)  # + the 3 sentinels
    return prompt, tok.encode(example.middle, add_special_tokens=False).ids


def joint_split(plain, table, prefix_ids: list[int], middle: str) -> tuple[list[int], list[int], int] | None:
    """Left to right as pretraining tokenizes a file: the text of `prefix_ids` and `middle` encoded
    together, cut before the first token that reaches into the middle. Returns (context, targets, how many
    of the prefix's bytes the first target re-covers), or None if the bytes do not round-trip."""
    prefix = b"".join(table[i] for i in prefix_ids)
    while prefix and 0x80 <= prefix[0] < 0xC0:  # a trimmed prefix may start inside a UTF-8 character
        prefix = prefix[1:]
    try:
        ids = plain.encode(prefix.decode("utf-8") + middle, add_special_tokens=False).ids
    except UnicodeDecodeError:
        return None
    if b"".join(table[i] for i in ids) != prefix + middle.encode("utf-8"):
        return None
    k = covered = 0
    while k < len(ids) and covered + len(table[ids[k]]) <= len(prefix):
        covered += len(table[ids[k]])
        k += 1
    return ids[:k], ids[k:], len(prefix) - covered


def measure(path: str, examples, *, max_body: int, max_new: int) -> dict:
    net, tok = checkpoint.load(path), cft.load(path)
    net.eval()
    cap, eot = net.cfg.max_seq_len, special_id(tok, EOT)
    stops = [special_id(tok, t) for t in FIM_STOPS]
    table = token_bytes(tok)
    plain = plain_encoder(tok)
    body, first, end, p_end, l2r_body = [], [], [], [], []
    fim_nats = fim_bytes = joint_nats = joint_bytes = 0.0
    ended = exact = first_line = l2r_first_line = scored = joint_scored = 0
    with torch.no_grad():
        for e in examples:
            # teacher-forced: prompt + body + EOT must fit the context
            target_room = cap - 3 - (max_body + 1) + 1
            prompt, middle = prompt_ids(tok, e, target_room)
            if not middle or len(middle) > max_body:
                continue
            scored += 1
            target = [*middle, eot]
            ids = torch.tensor([prompt + target[:-1]])
            logits = net(ids).logits[0, len(prompt) - 1 :].float()  # (len(target), V)
            losses = F.cross_entropy(logits, torch.tensor(target), reduction="none")
            body.append(losses[:-1].mean().item())
            first.append(losses[:3].mean().item())
            end.append(losses[-1].item())
            p_end.append(float(torch.exp(-losses[-1])))
            # left to right: the same prefix tokens (the FIM prompt's, between its first two sentinels)
            prefix = prompt[1 : prompt.index(special_id(tok, FIM_SUFFIX))] or [eot]
            logits = net(torch.tensor([prefix + middle[:-1]])).logits[0, len(prefix) - 1 :].float()
            l2r_body.append(F.cross_entropy(logits, torch.tensor(middle)).item())
            # the same, fairly: prefix text and body encoded together, as pretraining encodes a file
            split = joint_split(plain, table, prefix if prefix != [eot] else [], e.middle)
            if split is not None and split[1]:
                context, targets, straddle = split
                context = (context or [eot])[-(cap - len(targets)) :]
                logits = net(torch.tensor([context + targets[:-1]])).logits[0, len(context) - 1 :].float()
                joint_nats += F.cross_entropy(logits, torch.tensor(targets), reduction="sum").item()
                joint_bytes += len(e.middle.encode("utf-8")) + straddle
                fim_nats += losses[:-1].sum().item()
                fim_bytes += len(e.middle.encode("utf-8"))
                joint_scored += 1
            # greedy: the prompt trimmed so that max_new tokens fit after it
            prompt, _ = prompt_ids(tok, e, cap - 3 - max_new)
            out = generate(net, [prompt], max_new_tokens=max_new, temperature=0.0, stop_ids=stops)[0]
            text = decode(table, out)
            ended += len(out) < max_new
            exact += text.rstrip() == e.middle.rstrip()
            first_line += text.split("\n", 1)[0].rstrip() == e.middle.split("\n", 1)[0].rstrip()
            prefix = prompt[1 : prompt.index(special_id(tok, FIM_SUFFIX))] or [eot]
            healed, firsts, skips = heal_prompts([prefix], table)  # no lone trailing newline token
            out = generate(net, healed, max_new_tokens=max_new, temperature=0.0, stop_ids=[eot],
                           first_tokens=firsts)[0]  # fmt: skip
            l2r_first_line += (
                decode_after(table, out, skips[0]).split("\n", 1)[0].rstrip()
                == e.middle.split("\n", 1)[0].rstrip()
            )
    if not scored:
        raise SystemExit(f"{path}: no held-out body of at most {max_body} tokens")
    mean = statistics.mean
    return {
        "checkpoint": path,
        "functions": scored,
        "body_loss": mean(body),
        "first3_loss": mean(first),
        "end_loss": mean(end),
        "p_end_median": statistics.median(p_end),
        "greedy_ended": ended / scored,
        "exact_match": exact / scored,
        "first_line_match": first_line / scored,
        "l2r_body_loss": mean(l2r_body),
        "l2r_first_line_match": l2r_first_line / scored,
        # the fair left-to-right comparison (see the module's docstring), over `joint_functions`
        "joint_functions": joint_scored,
        "fim_nats_per_byte": fim_nats / fim_bytes if fim_bytes else None,
        "l2r_joint_nats_per_byte": joint_nats / joint_bytes if joint_bytes else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default=sysconfig.get_paths()["stdlib"], help="the pretraining data directory")
    ap.add_argument("--holdout", type=float, default=0.02, help="pretraining's held-out fraction")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-body", type=int, default=100, help="longest body scored, in tokens")
    ap.add_argument("--max-new", type=int, default=128, help="greedy middle's token budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lines", action="store_true", help="hide one line of each body, not the whole body")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    examples = infill_eval.heldout_functions(heldout_texts(Path(args.data), args.holdout), limit=args.limit,
                                             seed=args.seed)  # fmt: skip
    if args.lines:
        examples = infill_eval.heldout_lines(examples, seed=args.seed)
    if not examples:
        raise SystemExit(f"{args.data}: no held-out functions")
    rows = [measure(c, examples, max_body=args.max_body, max_new=args.max_new) for c in args.checkpoints]
    print(
        "| checkpoint | functions | body loss | first 3 tokens | end token | p(end) median | greedy ended "
        "| exact | first line | left-to-right body loss | left-to-right first line "
        "| FIM nats/byte | left-to-right nats/byte (joint) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['functions']} | {r['body_loss']:.3f} | {r['first3_loss']:.3f} | "
              f"{r['end_loss']:.3f} | {r['p_end_median']:.3f} | {r['greedy_ended']:.1%} | "
              f"{r['exact_match']:.1%} | {r['first_line_match']:.1%} | {r['l2r_body_loss']:.3f} | "
              f"{r['l2r_first_line_match']:.1%} | {r['fim_nats_per_byte'] or float('nan'):.4f} | "
              f"{r['l2r_joint_nats_per_byte'] or float('nan'):.4f} |")  # fmt: skip
    if args.json:
        for r in rows:  # each row says how it was drawn: the held-out split and the budgets
            r.update(data=args.data, holdout=args.holdout, limit=args.limit, seed=args.seed, lines=args.lines,
                     max_body=args.max_body, max_new=args.max_new)  # fmt: skip
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
