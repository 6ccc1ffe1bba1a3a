"""A local Hugging Face transformers causal LM, run in this process with `model.generate`.

Prompts are left-padded into batches of `batch_size`; only the new tokens are decoded (special
tokens skipped) and stop strings are applied afterwards, so generation runs to `max_tokens` or EOS.
Greedy decoding (temperature 0) computes one sequence per prompt and repeats it `n` times. Sampling
with a seed calls `torch.manual_seed(seed)` once per call: the same call on the same machine and
batch size reproduces. `chat` uses the tokenizer's chat template when it has one, else a plain
"role: content" transcript ending in "assistant:". torch and transformers are imported when a
backend is made, not when this module is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from codefoundry.models.backends.base import Conversation, SamplingParams, truncate_at_stop

INSTALL_HINT = "pip install torch transformers (for a CPU-only torch, use the CPU wheel index)"


def _import_torch_and_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"the hf backend needs torch and transformers ({e}); {INSTALL_HINT}") from e
    return torch, transformers


class HFBackend:
    def __init__(
        self,
        path: str,
        *,
        device: str | None = None,
        dtype: str | Any | None = None,  # "bfloat16", torch.float16, ...; None keeps the checkpoint's
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"HFBackend batch_size must be >= 1, got {batch_size}")
        torch, transformers = _import_torch_and_transformers()
        self._torch = torch
        self.name = f"hf:{path}"
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # generation appends on the right: pads go left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
        self.model.to(self.device).eval()
        self._generation_config = own = self.model.generation_config
        # transformers fills every knob a call leaves unset from the model's generation config: one holding
        # only the special tokens, so that no sampling default of the checkpoint's (min_p, top_h,
        # epsilon_cutoff, no_repeat_ngram_size, ...) applies unasked.
        self.model.generation_config = transformers.GenerationConfig(
            bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id, pad_token_id=own.pad_token_id
        )

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        if isinstance(prompts, str):
            raise TypeError("complete takes a sequence of prompts, not one string")
        return self._generate(list(prompts), params, add_special_tokens=True)

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[str]]:
        if getattr(self.tokenizer, "chat_template", None):
            texts = [
                self.tokenizer.apply_chat_template(
                    [dict(m) for m in conv], tokenize=False, add_generation_prompt=True
                )
                for conv in conversations
            ]
            # The template writes its own BOS and markers; tokenizing must not add them again.
            return self._generate(texts, params, add_special_tokens=False)
        texts = [
            "".join(f"{m['role']}: {m['content']}\n" for m in conv) + "assistant:" for conv in conversations
        ]
        return self._generate(texts, params, add_special_tokens=True)

    def _generate(
        self, texts: list[str], params: SamplingParams, *, add_special_tokens: bool
    ) -> list[list[str]]:
        torch = self._torch
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # Greedy samples are all the same sequence: compute it once.
        per_prompt = 1 if params.greedy else params.n
        config = self._config(params, per_prompt)
        results: list[list[str]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            encoded = self.tokenizer(
                batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            ).to(self.device)
            with torch.inference_mode():
                output = self.model.generate(**encoded, generation_config=config)
            # output: (len(batch) * per_prompt, prompt_len + new_len); the samples of prompt i are rows
            # i * per_prompt ... (i + 1) * per_prompt - 1; all prompts end at prompt_len (left padding).
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i in range(len(batch)):
                samples = decoded[i * per_prompt : (i + 1) * per_prompt]
                if params.greedy:
                    samples = samples * params.n
                results.append([truncate_at_stop(s, params.stop) for s in samples])
        return results

    def _config(self, params: SamplingParams, per_prompt: int) -> Any:
        """Generation settings from `params` alone, keeping only the checkpoint's special token ids.

        The checkpoint's own sampling defaults (temperature, top_k, repetition penalty, ...) are
        dropped on purpose: SamplingParams is the whole contract, the same for every backend.
        """
        _, transformers = _import_torch_and_transformers()
        own = self._generation_config
        # Every knob is set, because transformers fills unset ones from the checkpoint. In greedy mode
        # the sampling knobs get the values transformers treats as unset (anything else warns).
        if params.greedy:
            sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
        else:
            # min_p 0 too: left None, it would be the checkpoint's (generation_config.json's "min_p").
            sampling = {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0,
                        "min_p": params.min_p}  # fmt: skip
        return transformers.GenerationConfig(
            repetition_penalty=1.0,
            typical_p=1.0,
            max_new_tokens=params.max_tokens,
            do_sample=not params.greedy,
            num_return_sequences=per_prompt,
            bos_token_id=own.bos_token_id,
            eos_token_id=own.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
