"""codefoundry checkpoints: one directory holding `model.safetensors`, `config.json` (our `ModelConfig`)
and the tokenizer files, so a checkpoint is self-contained.

Tied embeddings are stored once (safetensors refuses shared storage): `lm_head.weight` is omitted when
`tie_embeddings` is set and re-tied on load. Loading checks every tensor name and shape against the config
and names the first mismatch.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from codefoundry.models.config import ModelConfig
from codefoundry.models.transformer import Transformer
from codefoundry.paths import output_dir

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# transformers (4.43 on) saves a tokenizer's chat template in a file of its own, no longer inside
# tokenizer_config.json; our own tokenizers have none, so it is optional.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ALL_TOKENIZER_FILES = (*TOKENIZER_FILES, CHAT_TEMPLATE_FILE)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the path and the problem."""


def state_dict_for_save(model: Transformer) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save(model: Transformer, out: str | Path, *, tokenizer: str | Path | None = None) -> Path:
    """Write the model (and, when given, the tokenizer directory's files) to `out`; returns `out`.

    The weights go to a temporary name first and are renamed into place, so a killed save never leaves a
    truncated `model.safetensors` behind.
    """
    from safetensors.torch import save_file

    out = output_dir(out)
    tmp_weights, tmp_config = out / (WEIGHTS + ".tmp"), out / (CONFIG + ".tmp")
    try:
        save_file(state_dict_for_save(model), str(tmp_weights), metadata={"format": "pt", "codefoundry": "1"})
        model.cfg.save(tmp_config)
    except BaseException:
        tmp_weights.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
        raise
    # Weights first, then the config: a kill between the two renames leaves new weights beside an old
    # config, which loading rejects by shape unless the shapes agree (then the config still describes them).
    tmp_weights.replace(out / WEIGHTS)
    tmp_config.replace(out / CONFIG)
    if tokenizer is not None:
        copy_tokenizer(tokenizer, out)
    return out


def copy_tokenizer(src: str | Path, out: str | Path) -> None:
    """Make `out`'s tokenizer files `src`'s: a file `src` lacks is removed from `out`, or an earlier
    tokenizer's chat template or special-token map would pass for this one's."""
    src, out = Path(src), Path(out)
    if src.is_file():
        src = src.parent
    if not (src / "tokenizer.json").is_file():
        raise CheckpointError(f"{src}: no tokenizer.json to copy into the checkpoint")
    if src.resolve() == out.resolve():
        return
    for name in ALL_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)


def check_tokenizer_fits(path: str | Path, token_ids: Iterable[int], vocab_size: int) -> None:
    """Refuse a tokenizer (in checkpoint `path`) with ids the model has no embedding row for: another
    model's tokenizer. A prompt holding such an id failed deep in generation ("prompt 0 has a token id
    outside [0, 400)", naming neither file), and an export handed transformers a tokenizer whose ids index
    past the embedding. Fewer tokens than rows is fine (an imported model's padded embedding)."""
    top = max(token_ids, default=-1)
    if top >= vocab_size:
        raise CheckpointError(
            f"{Path(path) / 'tokenizer.json'}: has token id {top}, but {CONFIG} says vocab_size {vocab_size}:"
            " the tokenizer is not this model's"
        )


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path}: not a codefoundry checkpoint (no {CONFIG})")
    try:
        return ModelConfig.load(path / CONFIG)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def load(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """The model saved in `path`, in eval mode, on `device` (and cast to `dtype` when given)."""
    path = Path(path)
    cfg = load_config(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS}")
    sd = read_weights(weights, device=device)
    with torch.device("meta"):
        model = Transformer(cfg)
    load_state(model, sd, where=str(weights))
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def read_weights(path: str | Path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a CheckpointError naming it when it is torn or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read the weights ({e})") from None


def load_state(model: Transformer, sd: dict[str, torch.Tensor], *, where: str) -> None:
    """Load `sd` into `model` (built on the meta device or not), checking names and shapes first."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
        head, embed = sd.get("lm_head.weight"), sd.get("embed.weight")
        # A copy of the tied matrix may be stored; a head of its own means untied weights (a config.json
        # without tie_embeddings reads as tied), which were dropped without a word.
        if head is not None and (embed is None or head.shape != embed.shape or not torch.equal(head, embed)):
            raise CheckpointError(
                f"{where}: holds an lm_head.weight of its own, but config.json ties it to embed.weight "
                "(set tie_embeddings to false)"
            )
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{where}: the weights do not match config.json ({what})")
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(sd[k].shape)}, config.json says {tuple(shape)}"
            )
        if not sd[k].is_floating_point():  # load_state_dict's own error was several lines of traceback
            dtype = str(sd[k].dtype).removeprefix("torch.")
            raise CheckpointError(f"{where}: {k} is {dtype}; the weights must be floating point")
    model.load_state_dict(sd, strict=False, assign=True)
    if model.cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    # Non-persistent buffers (rotary tables) are not in the file: rebuild them on a real device.
    from codefoundry.models.transformer import rope_tables

    device = next(iter(sd.values())).device if sd else torch.device("cpu")
    cos, sin = rope_tables(model.cfg, model.cfg.max_seq_len, device=device)
    model.rope_cos, model.rope_sin = cos, sin
