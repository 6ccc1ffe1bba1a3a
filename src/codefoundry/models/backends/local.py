"""A codefoundry checkpoint run in this process: `load_backend("cf:CKPT_DIR")`.

`complete` continues raw prompts (ending at <|endoftext|> or <|file_sep|>, and at the end of sequence
tokenizer_config.json names: an imported Llama's "</s>"); `chat` writes the
conversation in the tokenizer's chat tokens (`<|im_start|>role\\ncontent<|im_end|>\\n` per message, then
`<|im_start|>assistant\\n`) and ends the reply at <|im_end|>. The `n` samples of a prompt are rows of the
same batch; greedy decoding computes one and repeats it `n` times. With a seed, sample j of a prompt draws
from a stream keyed by the seed, the prompt's tokens and j (`sampling.child_seed`), so it does not depend
on the other prompts of the call, their order or the batch size: an eval resumed after a kill regenerates
what the lost samples were (while prompt and max_tokens fit the context: past it, `complete_ids` trims
each prompt to what the call's longest one leaves; and up to the last bits of the logits, which batching
moves: see `codefoundry.models.sampling`). Stop strings are applied as `truncate_at_stop` does.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codefoundry.models.backends.base import BackendError, Conversation, SamplingParams
from codefoundry.models.tokenizer import EOT, FILE_SEP, IM_END, IM_START


class LocalBackend:
    def __init__(
        self, path: str, *, device: str = "cpu", dtype: str | Any | None = None, batch_size: int = 16
    ) -> None:
        import torch

        from codefoundry.models import checkpoint
        from codefoundry.models import tokenizer as tokenizer_module
        from codefoundry.models.generate import PLAIN_BANNED, ids_of
        from codefoundry.models.hf import special_token_ids

        self.name = f"cf:{path}"
        if batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        root = Path(path)
        if not root.is_dir():
            raise BackendError(f"{self.name}: no such checkpoint directory")
        if not (root / "tokenizer.json").is_file():
            raise BackendError(f"{self.name}: the checkpoint has no tokenizer.json")
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise BackendError(f"{self.name}: unknown dtype {dtype!r}")
            dtype = getattr(torch, dtype)
        try:
            self.model = checkpoint.load(root, device=device, dtype=dtype)
            self.tokenizer = tokenizer_module.load(root)
            checkpoint.check_tokenizer_fits(
                root, self.tokenizer.get_vocab().values(), self.model.cfg.vocab_size
            )
            # Our end tokens where the tokenizer has them, and the end of sequence its tokenizer_config.json
            # names: an imported Llama's tokenizer has none of ours, and requiring them refused the model.
            eos = special_token_ids(root)["eos_token_id"]
            self._plain_stops = [*ids_of(self.tokenizer, (EOT, FILE_SEP)), *([] if eos is None else [eos])]
            # The chat tokens, None without them: then `chat` says so (plain completion still works).
            self._im_start = self.tokenizer.token_to_id(IM_START)
            im_end = self.tokenizer.token_to_id(IM_END)
            self._chat_stops = [] if im_end is None else [im_end, *ids_of(self.tokenizer, (EOT,))]
            self._banned = ids_of(self.tokenizer, PLAIN_BANNED)  # no FIM sentinel in a completion or answer
            self._plain = tokenizer_module.plain_text_copy(self.tokenizer)
        except (checkpoint.CheckpointError, ValueError) as e:
            raise BackendError(f"{self.name}: {e}") from None
        except Exception as e:  # the tokenizers library raises a bare Exception for a bad tokenizer.json
            raise BackendError(f"{self.name}: cannot load the tokenizer ({e})") from None

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        if isinstance(prompts, str):
            raise TypeError("complete takes a sequence of prompts, not one string")
        from codefoundry.models.completion import check_utf8

        for i, prompt in enumerate(prompts):
            check_utf8(prompt, f"{self.name}: prompt {i}")
        ids = [e.ids for e in self.tokenizer.encode_batch(list(prompts), add_special_tokens=False)]
        return self._generate(ids, params, self._plain_stops)

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[str]]:
        if self._im_start is None or not self._chat_stops:
            missing = IM_START if self._im_start is None else IM_END
            raise BackendError(f"{self.name}: the tokenizer has no {missing} token, which chat needs")
        return self._generate([self._chat_ids(conv) for conv in conversations], params, self._chat_stops)

    def _chat_ids(self, conv: Conversation) -> list[int]:
        """The conversation in chat tokens. Roles and contents are encoded as plain text, so a message
        that contains "<|im_end|>" or "<|im_start|>" cannot close its turn or open another role's."""
        im_start, im_end = self._im_start, self._chat_stops[0]
        from codefoundry.models.completion import check_utf8

        texts = [f"{m['role']}\n{m['content']}" for m in conv] + ["\n", "assistant\n"]
        for i, text in enumerate(texts):
            check_utf8(text, f"{self.name}: message {i}")
        *messages, newline, assistant = (
            e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)
        )
        ids: list[int] = []
        for message in messages:
            ids += [im_start, *message, im_end, *newline]
        return ids + [im_start, *assistant]

    def _generate(self, ids: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[list[str]]:
        from codefoundry.models.completion import complete_ids
        from codefoundry.models.sampling import child_seed

        # The n samples of a prompt are adjacent rows; greedy ones are all the same sequence.
        per_prompt = 1 if params.greedy else params.n
        rows = [p for p in ids for _ in range(per_prompt)]
        seeds = None
        if params.seed is not None:
            keys = [child_seed(params.seed, _digest(p)) for p in ids]
            seeds = [child_seed(key, j) for key in keys for j in range(per_prompt)]
        texts = complete_ids(
            self.model, self.tokenizer, rows, max_new_tokens=params.max_tokens, stop_ids=stop_ids,
            stop=params.stop, temperature=params.temperature, top_p=params.top_p, min_p=params.min_p,
            seed=seeds, batch_size=self.batch_size, banned_ids=self._banned,
        )  # fmt: skip
        return [
            texts[i * per_prompt : (i + 1) * per_prompt] * (params.n if params.greedy else 1)
            for i in range(len(ids))
        ]


def _digest(ids: list[int]) -> int:
    """A 64-bit digest of a prompt's token ids: what keys its samples' streams."""
    return int.from_bytes(hashlib.blake2b(array("q", ids).tobytes(), digest_size=8).digest(), "little")
