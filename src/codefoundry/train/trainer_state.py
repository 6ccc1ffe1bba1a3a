"""What a pretraining run saves to resume exactly: the checkpoint directory (a codefoundry checkpoint plus
`trainer_state.pt` with the optimizer, step, config and RNG states), written to `checkpoint.tmp` and
swapped into place, and the checks that a resumed config can continue it.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from codefoundry.models import checkpoint as ckpt
from codefoundry.models.transformer import Transformer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from codefoundry.train.data import PretrainData
    from codefoundry.train.pretrain import PretrainConfig

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer_state.pt"
# Fields that change the model's parameters: a resume must keep them.
# what a resumed run must share with its checkpoint: the model's shape and the optimizer state's kind
SHAPE_FIELDS = ("size", "shape", "moe_experts", "moe_top_k", "mtp_depth", "optimizer")
# what a checkpoint written before a field existed was trained with
OLDER_DEFAULTS = {"optimizer": "adamw"}
# What else decides the loss curve: the data each step draws and the update it makes. A resume may change
# them (to train longer, say), but then it no longer reproduces the uninterrupted run, and is told so.
TRAJECTORY_FIELDS = (
    "data", "steps", "batch_size", "grad_accum", "seq_len", "lr", "min_lr", "warmup", "weight_decay", "betas",
    "grad_clip", "fim_rate", "spm_rate", "fim_line_rate", "holdout", "mtp_weight", "dtype", "seed",
    "time_budget_s",  # without it a resume trains to the steps asked, not to the count a budget fitted
)  # fmt: skip


def _comparable(name: str, value: Any) -> Any:
    """A config value as saved and as given: tuples and lists alike, a data path however it was written."""
    if name == "data" and isinstance(value, str):
        return str(Path(value).resolve())
    return tuple(value) if isinstance(value, list | tuple) else value


def param_digest(model: nn.Module) -> str:
    """sha256 over every parameter's name and bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # as plain lists and tuples so the state loads with weights_only=True
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])


def save_checkpoint(
    out: str | Path, model: Transformer, optimizer: torch.optim.Optimizer, state: dict, *, tokenizer: str
) -> Path:
    """Write OUT/checkpoint (a codefoundry checkpoint plus trainer_state.pt) atomically; returns its path."""
    out = Path(out)
    final, tmp, old = out / CHECKPOINT, out / f"{CHECKPOINT}.tmp", out / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt.save(model, tmp, tokenizer=tokenizer)
    trainer = {**state, "optimizer": optimizer.state_dict(), "rng": rng_state()}
    torch.save(trainer, tmp / TRAINER_STATE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint under OUT (OUT/checkpoint, else the .old a kill mid-swap left)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        path = Path(out) / name
        if (path / TRAINER_STATE).is_file() and (path / ckpt.WEIGHTS).is_file():
            return path
    return None


def nothing_to_resume(out: str | Path) -> str:
    """Why `find_checkpoint(out)` found none, naming what OUT/checkpoint lacks: the message said "no
    trainer_state.pt" also when that file was there and the weights were what had been deleted."""
    path = Path(out) / CHECKPOINT
    if not path.is_dir():
        return f"{path}: nothing to resume (no such directory)"
    lacking = [name for name in (TRAINER_STATE, ckpt.WEIGHTS) if not (path / name).is_file()]
    return f"{path}: nothing to resume (no {' and no '.join(lacking)})"


def run_facts(data: PretrainData, world_size: int) -> dict[str, Any]:
    """What decides the loss curve that the config does not hold, saved beside it: the number of ranks (each
    draws its own batches) and a digest of the data as opened (files changed under the same path)."""
    return {"world_size": world_size, "data_digest": data.digest()}


def _fact_changes(saved: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    changed = [name for name, value in facts.items() if name in saved and saved[name] != value]
    return [
        "changed data (its files or shards differ from the checkpoint's)"
        if name == "data_digest"
        else f"{name}={facts[name]!r} (was {saved[name]!r})"
        for name in changed
    ]


def _check_vocabulary(path: Path, tokenizer: Tokenizer, where: str) -> None:
    """Refuse a tokenizer whose tokens are not the checkpoint's: each embedding row stands for one token."""
    from tokenizers import Tokenizer as HFTokenizer

    saved = path / "tokenizer.json"
    if saved.is_file() and HFTokenizer.from_file(str(saved)).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"{path}: cannot resume with the tokenizer {where}: its vocabulary is not the one the checkpoint"
            " was trained with (as many tokens, other ones)"
        )


def read_trainer_state(path: Path) -> dict[str, Any]:
    """PATH/trainer_state.pt (it must hold the run's `config`), or a ValueError naming it when it is torn
    or not one: SFT and RL resumes loaded it bare, and a damaged one was a traceback."""
    try:
        state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as e:
        # torch's messages run to several sentences; the first says what is wrong (a KeyError's is a number)
        why = "not a file torch.save wrote" if isinstance(e, KeyError) else str(e).split(". ")[0]
        raise ValueError(f"{path / TRAINER_STATE}: cannot read the trainer state ({why})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ValueError(f"{path / TRAINER_STATE}: cannot read the trainer state (no run config in it)")
    return state


def load_checkpoint(
    path: Path,
    model: Transformer,
    cfg: PretrainConfig,
    *,
    facts: dict[str, Any] | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict[str, Any]:
    """Check that `cfg` (with this run's `facts` and `tokenizer`, when given) can continue the checkpoint,
    load its weights into `model`, return its state."""
    state = read_trainer_state(path)
    saved = state["config"]
    for name in SHAPE_FIELDS:
        if name == "moe_top_k" and not cfg.moe_experts:
            continue
        trained = saved.get(name, OLDER_DEFAULTS.get(name))
        if trained != getattr(cfg, name):
            raise ValueError(
                f"{path}: cannot resume with {name}={getattr(cfg, name)!r}:"
                f" the checkpoint was trained with {name}={trained!r}"
            )
    stored = ckpt.load_config(path)
    if stored.vocab_size != model.cfg.vocab_size:
        raise ValueError(
            f"{path}: cannot resume: the checkpoint has a {stored.vocab_size}-token vocabulary,"
            f" the tokenizer {cfg.tokenizer} has {model.cfg.vocab_size}"
        )
    if tokenizer is not None:
        _check_vocabulary(path, tokenizer, cfg.tokenizer)
    changed = [
        f"{name}={getattr(cfg, name)!r} (was {saved[name]!r})"
        for name in TRAJECTORY_FIELDS
        if name in saved and _comparable(name, saved[name]) != _comparable(name, getattr(cfg, name))
    ] + _fact_changes(state.get("facts", {}), facts or {})
    if changed:
        print(
            f"{path}: resuming with {', '.join(changed)}: the run will not reproduce an uninterrupted one",
            file=sys.stderr,
        )
    ckpt.load_state(model, ckpt.read_weights(path / ckpt.WEIGHTS), where=str(path / ckpt.WEIGHTS))
    # The same options can build another model when a default changes between versions (session 34: a
    # top-1 MoE's gate became the router's probability): its weights would go on under other arithmetic.
    saved_model, built = stored.to_dict(), model.cfg.to_dict()
    differ = [k for k in saved_model if k != "max_seq_len" and saved_model[k] != built.get(k)]
    if differ:
        raise ValueError(
            f"{path}: cannot resume: its model has {', '.join(f'{k}={saved_model[k]!r}' for k in differ)},"
            f" this run builds {', '.join(f'{k}={built.get(k)!r}' for k in differ)}"
        )
    return state
