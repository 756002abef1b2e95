"""The GenPRM's base model in the offline world: the policy, pretrained further on generic skills.

The paper fine-tunes a reasoning model that already reads and writes short Python
(DeepSeek-R1-Distill-Qwen) into the GenPRM; it is not the policy. The small world's policy has seen only
a few thousand skill documents among its word-problem solutions, and it copies a sentence's claim into
``print(a op b == c)`` exactly in about 1 case in 6 (``claim_copy`` in ``metrics/bootstrap.json``).
Continued pretraining on the skill documents of ``components/world/skills.py`` alone (plain chat with a
generic assistant; never the critique format, the pipeline's labels or its test sets) gives the GenPRM a
base that copies numbers from text into code, the one capability the critique needs that the policy's
corpus barely teaches. ``steps: 0`` makes the base the policy itself (the former behaviour).

Run by the ``bootstrap`` stage: ``genprm bootstrap --set bootstrap.critic.steps=600``.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.method.rationale import code_blocks
from components.platform.config import option
from components.platform.errors import ConfigError
from components.world.pretrain import Example, TrainConfig, pretrain
from components.world.skills import SKILLS_SYSTEM_PROMPT, claim, skill_document
from components.world.synthetic import SyntheticConfig, generate_problems

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

PROBE_SEED = 7919


@dataclass(frozen=True)
class CriticBaseConfig:
    """The ``bootstrap.critic`` section: continued pretraining of the GenPRM's base on skill documents."""

    steps: int = option(
        1200, help="Optimizer steps on skill documents after the policy (0: the GenPRM's base is the policy)."
    )
    lr: float = option(1e-3, help="Peak learning rate (AdamW, warm-up then cosine decay).")
    batch_size: int = option(32, help="Sequences per optimizer step.")
    warmup_steps: int = option(20, help="Linear warm-up steps.")
    corpus_size: int = option(8000, help="World problems the skill documents are drawn from.")
    seed: int = option(77, help="Seed of the skill corpus (a different draw from the policy's corpus).")
    probe_problems: int = option(128, help="Held-out claim-copy prompts measuring policy and base.")
    output_dir: str = option("models/base", help="Where the GenPRM's base model is saved (train.base_model).")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.corpus_size < 1 or self.probe_problems < 1:
            raise ConfigError("bootstrap.critic: steps >= 0; batch_size, corpus_size, probe_problems >= 1")
        if self.lr <= 0:
            raise ConfigError(f"bootstrap.critic.lr: must be > 0, got {self.lr}")


def skill_corpus(cfg: CriticBaseConfig, world: SyntheticConfig, exclude: set[str]) -> list[Example]:
    """Skill documents drawn from fresh world problems, none of them a held-out problem."""
    from components.data.records import normalize_text
    from components.world.synthetic import problem_text

    rng = random.Random(cfg.seed)
    problems = generate_problems(world, cfg.corpus_size, seed=cfg.seed, prefix="skills")
    return [skill_document(p, rng) for p in problems if normalize_text(problem_text(p)) not in exclude]


def claim_prompts(world: SyntheticConfig, count: int) -> list[tuple[list[dict[str, str]], str]]:
    """(messages, expected code line) of the ``claim`` skill on problems no corpus draws (own seed)."""
    rng = random.Random(PROBE_SEED)
    out = []
    for problem in generate_problems(world, count, seed=PROBE_SEED, prefix="probe"):
        user, answer = claim(problem, rng)
        messages = [{"role": "system", "content": SKILLS_SYSTEM_PROMPT}, {"role": "user", "content": user}]
        blocks = code_blocks(answer)
        out.append((messages, blocks[0] if blocks else ""))
    return out


def claim_copy_rate(model_dir: Path, probes: list[tuple[list[dict[str, str]], str]]) -> float:
    """Fraction of probes where the model's greedy code copies the sentence's claim exactly."""
    from components.backends import BackendConfig, GenerationRequest, SamplingParams, make_backend

    backend = make_backend(BackendConfig(backend="hf", model=str(model_dir), batch_size=64))
    try:
        requests = [GenerationRequest(messages=m) for m, _ in probes]
        results = backend.generate(requests, SamplingParams(temperature=0.0, max_tokens=48, seed=0))
    finally:
        backend.close()
    hits = 0
    for result, (_, expected) in zip(results, probes, strict=True):
        blocks = code_blocks(result.samples[0].text + "\n```")  # closes a block cut by max_tokens
        hits += bool(blocks and blocks[0].strip() == expected)
    return round(hits / len(probes), 4)


def train_critic_base(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    cfg: CriticBaseConfig,
    world: SyntheticConfig,
    exclude: set[str],
    out_dir: Path,
    policy_dir: Path,
) -> dict[str, Any]:
    """Continue pretraining ``model`` (the policy, in place) on skill documents and save it to ``out_dir``.

    With ``cfg.steps == 0`` the policy directory is copied. Returns the claim-copy rates of the policy and
    the base, the seconds spent and the loss curve.
    """
    started = time.perf_counter()
    probes = claim_prompts(world, cfg.probe_problems)
    metrics: dict[str, Any] = {"claim_copy_policy": claim_copy_rate(policy_dir, probes)}
    curve: list[tuple[int, float]] = []
    if cfg.steps == 0:
        shutil.copytree(policy_dir, out_dir)
    else:
        pairs = skill_corpus(cfg, world, exclude)
        log.info("critic base: %d skill documents, %d steps", len(pairs), cfg.steps)
        train = TrainConfig(
            steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, log_every=50
        )
        curve = pretrain(model, tokenizer, pairs, train, seed=cfg.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    metrics["claim_copy_base"] = claim_copy_rate(out_dir, probes)
    metrics["critic_base_seconds"] = round(time.perf_counter() - started, 1)
    log.info(
        "claim copy rate: policy %.3f, base %.3f", metrics["claim_copy_policy"], metrics["claim_copy_base"]
    )
    return metrics | {"critic_loss_curve": curve}
