"""Pretraining loop and policy measurement for the ``bootstrap`` stage.

A plain PyTorch loop (the small world is too small for a trainer's overhead to pay): AdamW, linear
warm-up then cosine decay, right-padded batches, loss on the assistant turn only by default. Each
example is tokenized in two pieces split exactly where generation will start (after the ``Step 1: ``
prefill), so the model learns the token boundary it meets at rollout time.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from components.method.prompts import STEP_PREFILL, chat_messages
from components.platform.config import option

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from components.world.synthetic import WorldProblem

log = logging.getLogger(__name__)

PAD_MULTIPLE = 16


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining loop settings."""

    steps: int = option(1000, help="Optimizer steps.")
    batch_size: int = option(32, help="Sequences per optimizer step.")
    lr: float = option(3e-3, help="Peak learning rate (AdamW).")
    min_lr_ratio: float = option(0.1, help="Final learning rate as a fraction of the peak (cosine decay).")
    warmup_steps: int = option(50, help="Linear warm-up steps.")
    weight_decay: float = option(0.01, help="AdamW weight decay.")
    loss_on: str = option("solution", help="'solution' (assistant turn only) or 'all' tokens.")
    log_every: int = option(50, help="Log and record the loss every this many steps.")
    whole_text_fraction: float = option(
        0.5,
        help="Fraction of examples tokenized as one piece after the prompt (as step prefixes are when "
        "prefilled); the rest are split after 'Step 1: ' (as a rollout's prompt and generation are).",
    )
    bf16_autocast: bool = option(
        True,
        help="Run forward/backward under bfloat16 autocast where the CPU computes bf16 natively "
        "(oneDNN: AVX512-BF16 or AMX; faster there); fp32 on other CPUs, where bf16 is emulated and slow.",
    )


@dataclass(frozen=True)
class EvalConfig:
    """How the policy is measured after training."""

    num_problems: int = option(200, help="Held-out synthetic problems to solve.")
    temperature: float = option(0.7, help="Sampling temperature of the policy measurement.")
    max_new_tokens: int = option(160, help="Generation budget per solution.")
    batch_size: int = option(64, help="Generation batch size.")


Example = tuple[str | list[dict[str, str]], str]
"""(prompt, solution): the problem text (the rollout prompt), or the chat messages before the solution."""


def encode_example(
    tokenizer: PreTrainedTokenizerFast,
    problem: str | list[dict[str, str]],
    solution: str,
    loss_on: str,
    split_at_prefill: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where no loss) for one chat-formatted solution.

    With ``split_at_prefill`` the text is tokenized in two pieces split after ``Step 1: ``, the boundary
    a rollout meets (prompt + prefill, then generation). Without it, the solution is tokenized in one
    piece after the prompt, as a prefill of whole steps (the label stage's prefixes) is tokenized.
    A solution to a rollout prompt (``problem`` a str) must start with ``Step 1: ``; an answer in a
    conversation (``problem`` the messages) that does not (a skill document) is one piece.
    """
    messages = chat_messages(problem) if isinstance(problem, str) else problem
    prompt = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    stepwise = solution.startswith(STEP_PREFILL)
    if isinstance(problem, str) and not stepwise:
        raise ValueError(f"solution must start with {STEP_PREFILL!r}: {solution[:40]!r}")
    cut = len(STEP_PREFILL) if split_at_prefill and stepwise else 0
    head = tokenizer(prompt + solution[:cut], add_special_tokens=False)["input_ids"]
    tail = tokenizer(solution[cut:] + tokenizer.eos_token + "\n", add_special_tokens=False)["input_ids"]
    ids = head + tail
    labels = ids.copy() if loss_on == "all" else [-100] * len(head) + tail
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of (ids, labels) into tensors."""
    import torch

    # A few fixed widths: CPU kernels are specialised per shape, and a new shape every step is slow.
    width = -(-max(len(ids) for ids, _ in batch) // PAD_MULTIPLE) * PAD_MULTIPLE
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def length_bucketed_batches(
    lengths: list[int], batch_size: int, rng: random.Random, buckets: int = 16
) -> list[list[int]]:
    """One epoch of index batches: shuffled, then sorted by length within windows of ``buckets``
    batches, so each batch holds similar lengths (little padding); the batch order is shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * buckets
    batches: list[list[int]] = []
    for start in range(0, len(order) - batch_size + 1, window):
        chunk = sorted(order[start : start + window], key=lengths.__getitem__)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size))
    rng.shuffle(batches)
    return batches


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def use_bf16_autocast(requested: bool) -> bool:
    """Whether to autocast to bf16: asked for, and the CPU has native bf16. On a CPU without it (AVX2
    only) torch emulates bf16 and a step of the policy's pretraining took ~20 s instead of well under 1 s."""
    import torch

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if requested and not native:
        log.info("bf16 autocast off: this CPU has no native bf16 (AVX512-BF16/AMX); training in fp32")
    return requested and native


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[Example],
    cfg: TrainConfig,
    seed: int,
) -> list[tuple[int, float]]:
    """Train ``model`` in place on (problem, solution) pairs; returns (step, mean loss) points."""
    import torch

    rng = random.Random(seed)
    examples = [
        encode_example(tokenizer, p, s, cfg.loss_on, split_at_prefill=rng.random() >= cfg.whole_text_fraction)
        for p, s in pairs
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    autocast = use_bf16_autocast(cfg.bf16_autocast)
    model.train()
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    pending: list[list[int]] = []
    for step in tqdm(range(cfg.steps), desc="pretrain", unit="step", mininterval=5):
        if not pending:
            pending = length_bucketed_batches([len(ids) for ids, _ in examples], cfg.batch_size, rng)
        batch = [examples[i] for i in pending.pop()]
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**collate(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, sum(window) / len(window)))
            log.info("step %d loss %.4f lr %.2e", step + 1, curve[-1][1], scheduler.get_last_lr()[0])
            window = []
    model.eval()
    return curve


def evaluate_policy(
    model_dir: Path, problems: list[WorldProblem], cfg: EvalConfig, seed: int
) -> dict[str, Any]:
    """Accuracy of the saved policy on ``problems``: greedy and at ``cfg.temperature``."""
    from components.backends import BackendConfig, GenerationRequest, SamplingParams, make_backend
    from components.method.grading import extract_answer
    from components.world.synthetic import problem_text

    backend = make_backend(BackendConfig(backend="hf", model=str(model_dir), batch_size=cfg.batch_size))
    requests = [
        GenerationRequest(messages=chat_messages(problem_text(p)), prefill=STEP_PREFILL) for p in problems
    ]
    metrics: dict[str, Any] = {}
    for label, temperature in (("greedy", 0.0), ("sampled", cfg.temperature)):
        params = SamplingParams(temperature=temperature, max_tokens=cfg.max_new_tokens, seed=seed)
        results = backend.generate(requests, params)
        correct = [
            extract_answer(r.samples[0].text) == str(p.answer) for r, p in zip(results, problems, strict=True)
        ]
        metrics[f"accuracy_{label}"] = round(sum(correct) / len(correct), 4)
        log.info("policy accuracy %s: %.3f", label, metrics[f"accuracy_{label}"])
    metrics["eval_temperature"] = cfg.temperature
    backend.close()
    return metrics
