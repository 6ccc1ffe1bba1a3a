"""Cross-library check: on one tiny random Qwen2 and one batch, our temperature-scaled log-probs and our
GRPO loss (token-mean, global token count) equal TRL's, computed by TRL's own `GRPOTrainer.compute_loss`,
in value and in the gradient of every weight.

TRL's default `loss_type` is "dapo": sum of the masked per-token losses divided by `num_items_in_batch`,
the token count of the whole generation batch; that is our `token-mean` with `global_tokens`. The trainer
is put in eval mode so its normaliser is exactly `num_items_in_batch` (in train mode it also folds in the
accumulation steps, which only a running training loop sets). Written against trl 1.16.
"""

from __future__ import annotations

import pytest
import torch

from codefoundry.train.rl import (
    aggregate_loss,
    compute_advantages,
    kl_penalty,
    logprobs_from_logits,
    policy_loss,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

VOCAB, PROMPT, COMPLETION = 64, 3, 6
TEMPERATURE = 0.7
LENGTHS = [6, 3, 5, 2, 6, 1, 4, 6]  # ragged completions, two groups of four
REWARDS = torch.tensor([1.0, 0, 1, 0, 0, 0, 1, 0])


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="t0", pad_token="t1", eos_token="t2"
    )


def tiny_qwen2(out) -> str:
    """Save a tiny random Qwen2 under `out` and return its directory: TRL loads the policy (and, with a KL
    term, the reference model) from it, and so do we."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(out / "tiny-qwen2")
    return str(out / "tiny-qwen2")


def load(model_dir: str):
    return transformers.Qwen2ForCausalLM.from_pretrained(model_dir).eval()


def build_trainer(model_dir: str, out, *, beta: float, epsilon_high: float):
    args = trl.GRPOConfig(
        output_dir=str(out / "grpo"),
        use_cpu=True,
        per_device_train_batch_size=len(LENGTHS),
        num_generations=4,
        max_completion_length=COMPLETION,
        temperature=TEMPERATURE,
        beta=beta,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        use_bias_correction_kl=False,  # the plain k3 of TRL's formula, which our kl_penalty gives
        bf16=False,  # TRL defaults to bf16 autocast, even on CPU; compare in fp32
        report_to=[],
    )
    assert args.loss_type == "dapo"  # TRL's default, which this test mirrors with token-mean
    dataset = datasets.Dataset.from_dict({"prompt": ["t3 t4 t5"] * 4})
    trainer = trl.GRPOTrainer(
        model=model_dir,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer(),
    )
    trainer.model.eval()
    return trainer


def batch():
    gen = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, VOCAB, (len(LENGTHS), PROMPT), generator=gen)
    completion_ids = torch.randint(3, VOCAB, (len(LENGTHS), COMPLETION), generator=gen)
    completion_mask = (torch.arange(COMPLETION)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return prompt_ids, completion_ids, completion_mask


def our_logps(model, prompt_ids, completion_ids, completion_mask):
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([torch.ones_like(prompt_ids), completion_mask], dim=1)
    logits = model(input_ids=ids, attention_mask=attention).logits  # (B, P + C, V)
    # Position t scores token t + 1: the completion's logits start one before it.
    return logprobs_from_logits(logits[:, PROMPT - 1 : -1], completion_ids, TEMPERATURE)


def test_temperature_scaled_logprobs_match_trl(tmp_path) -> None:
    model_dir = tiny_qwen2(tmp_path)
    ours = load(model_dir)
    trainer = build_trainer(model_dir, tmp_path, beta=0.0, epsilon_high=0.2)
    prompt_ids, completion_ids, completion_mask = batch()
    with torch.no_grad():
        theirs, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([torch.ones_like(prompt_ids), completion_mask], dim=1),
            COMPLETION,
        )
        mine = our_logps(ours, prompt_ids, completion_ids, completion_mask)
    valid = completion_mask.bool()
    diff = (theirs[valid] - mine[valid]).abs().max().item()
    print(f"\nlog-prob max abs diff vs TRL: {diff:.3e}")
    assert diff < 1e-5


@pytest.mark.parametrize(("beta", "epsilon_high"), [(0.0, 0.2), (0.04, 0.28)])
def test_grpo_loss_and_gradients_match_trl(tmp_path, beta: float, epsilon_high: float) -> None:
    model_dir = tiny_qwen2(tmp_path)
    ours = load(model_dir)
    trainer = build_trainer(model_dir, tmp_path, beta=beta, epsilon_high=epsilon_high)
    prompt_ids, completion_ids, completion_mask = batch()
    advantages = compute_advantages("grpo", REWARDS, completion_mask, 4)  # (B, C)

    logp = our_logps(ours, prompt_ids, completion_ids, completion_mask)
    # Old and reference log-probs a little off the current ones, so that both clips fire.
    gen = torch.Generator().manual_seed(2)
    logp_old = logp.detach() + 0.3 * torch.randn(logp.shape, generator=gen)
    logp_ref = logp.detach() + 0.2 * torch.randn(logp.shape, generator=gen)
    n_tokens = completion_mask.sum()

    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages[:, 0],  # TRL holds one advantage per completion
        "num_items_in_batch": n_tokens,
        "old_per_token_logps": logp_old,
        "ref_per_token_logps": logp_ref,
    }
    trl_loss = trainer.compute_loss(trainer.model, inputs)

    our_loss, stats = policy_loss(
        logp, logp_old, advantages, completion_mask, clip_high=epsilon_high, global_tokens=n_tokens
    )
    if beta:
        kl = kl_penalty(logp, logp_ref, "k3")
        our_loss = our_loss + beta * aggregate_loss(kl, completion_mask, global_tokens=n_tokens)
    assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0

    print(f"\nbeta={beta}: TRL {trl_loss.item():.8f} ours {our_loss.item():.8f}")
    print(f"abs diff {abs(trl_loss.item() - our_loss.item()):.3e}")
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)

    trl_loss.backward()
    our_loss.backward()
    worst, largest = 0.0, 0.0
    for (name, theirs), mine in zip(trainer.model.named_parameters(), ours.parameters(), strict=True):
        assert theirs.grad is not None and mine.grad is not None, name
        worst = max(worst, (theirs.grad - mine.grad).abs().max().item())
        largest = max(largest, mine.grad.abs().max().item())
    print(f"gradient max abs diff {worst:.3e} (largest gradient entry {largest:.3e})")
    assert worst < 1e-6 and largest > 1e-3
