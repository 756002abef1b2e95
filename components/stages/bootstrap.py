"""The ``bootstrap`` stage: make the small policy model of the offline world.

Trains a byte-level BPE tokenizer on the synthetic corpus, builds a small Qwen2/Llama model from a
config, pretrains it on chat-formatted solutions (a mixture of gold solutions and solutions with one
error of each kind in ``components/world/mistakes.py``, some recovered from), optionally feedback
conversations and generic skill documents (short Python and arithmetic, ``components/world/skills.py``),
loss on the assistant turn only, saves both with ``save_pretrained`` and measures how
often the policy solves held-out problems greedily and at the sampling temperature.

    genprm bootstrap [--set bootstrap.train.steps=200]

Then the GenPRM's base (``components/world/criticbase.py``): the same model pretrained further on skill
documents alone, so it copies numbers from text into code (the paper's GenPRM base is a reasoning model
that writes Python, not the policy).

Outputs ``models/policy`` and ``models/base`` (model directories loadable with ``from_pretrained``),
``metrics/bootstrap.json`` (with ``claim_copy_policy`` / ``claim_copy_base``) and
``plots/bootstrap_loss.json``.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.method.prompts import GENPRM_SYSTEM_PROMPT, POLICY_SYSTEM_PROMPT, solution_text
from components.platform.config import option, section
from components.platform.errors import ConfigError
from components.world.criticbase import CriticBaseConfig
from components.world.mistakes import (
    DEFAULT_KIND_WEIGHTS,
    KINDS_HELP,
    REMARK_HELP,
    check_weights,
    correct_solution,
    draw_mistake,
)
from components.world.pretrain import EvalConfig, Example, TrainConfig
from components.world.skills import SKILLS_HELP
from components.world.smallmodel import ModelConfig
from components.world.synthetic import SyntheticConfig, WorldProblem, generate_problems, problem_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapConfig:
    """The ``bootstrap`` section of params.yaml."""

    seed: int = option(1234, help="Seed for corpus, initialisation and sampling.")
    corpus_size: int = option(40000, help="Training solutions generated for pretraining.")
    error_fraction: float = option(0.2, help="Fraction of training solutions with one injected error.")
    error_kinds: dict[str, float] = option(DEFAULT_KIND_WEIGHTS, help=KINDS_HELP)
    remark_rate: float = option(0.2, help=REMARK_HELP)
    skills_fraction: float = option(0.15, help=SKILLS_HELP)
    feedback_fraction: float = option(
        0.0,
        help="Fraction of the corpus that is feedback conversations (a solution, the refinement "
        "protocol's feedback on one paragraph, the revised solution; components/world/feedback.py).",
    )
    vocab_size: int = option(1024, help="BPE vocabulary size (special tokens included).")
    threads: int = option(2, help="torch CPU threads.")
    model: ModelConfig = section(ModelConfig, help="Model shape.")
    train: TrainConfig = section(TrainConfig, help="Pretraining loop.")
    eval: EvalConfig = section(EvalConfig, help="Policy measurement.")
    critic: CriticBaseConfig = section(
        CriticBaseConfig, help="The GenPRM's base: the policy pretrained further on skill documents."
    )
    output_dir: str = option("models/policy", help="Where the model and tokenizer are saved.")

    def __post_init__(self) -> None:
        check_weights(self.error_kinds, "bootstrap.error_kinds")
        for key in ("error_fraction", "remark_rate", "skills_fraction", "feedback_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"bootstrap.{key}: must be in [0, 1], got {getattr(self, key)}")


def training_solution(problem: WorldProblem, rng: random.Random, cfg: BootstrapConfig, world: Any) -> str:
    """A correct solution (some with a side remark) or, with probability ``error_fraction``, one with a
    single error of a kind drawn by ``error_kinds``."""
    if rng.random() < cfg.error_fraction:
        mistake = draw_mistake(problem, rng, world, cfg.error_kinds)
        if mistake is not None:
            return solution_text(mistake.steps)
    return solution_text(correct_solution(problem, rng, cfg.remark_rate))


def build_corpus(cfg: BootstrapConfig, world: SyntheticConfig, exclude: set[str]) -> list[Example]:
    """(prompt, solution) pairs for pretraining, skipping problems in ``exclude``.

    The prompt is the problem text (the rollout prompt) or, for a feedback conversation or a skill
    document, the messages before the assistant's answer.
    """
    from components.data.records import normalize_text
    from components.world.feedback import feedback_example
    from components.world.skills import skill_document

    rng = random.Random(cfg.seed)
    problems = generate_problems(world, cfg.corpus_size, seed=cfg.seed, prefix="corpus")
    pairs: list[Example] = []
    for problem in problems:
        text = problem_text(problem)
        if normalize_text(text) in exclude:
            continue
        # Drawn only when feedback is on, so a corpus without it is the one earlier versions made.
        if cfg.feedback_fraction > 0 and rng.random() < cfg.feedback_fraction:
            example = feedback_example(problem, rng, world, kinds=cfg.error_kinds)
            if example is not None:
                pairs.append(example)
                continue
        if cfg.skills_fraction > 0 and rng.random() < cfg.skills_fraction:
            pairs.append(skill_document(problem, rng))
            continue
        pairs.append((text, training_solution(problem, rng, cfg, world)))
    return pairs


def corpus_mix(pairs: list[Example]) -> dict[str, int]:
    """How many corpus examples are solutions, feedback conversations and skill documents."""
    from components.world.skills import SKILLS_SYSTEM_PROMPT

    def kind(prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return "solutions"
        return "skills" if prompt[0]["content"] == SKILLS_SYSTEM_PROMPT else "feedback"

    kinds = Counter(kind(p) for p, _ in pairs)
    return {k: kinds[k] for k in ("solutions", "feedback", "skills")}


def eval_problems(cfg: BootstrapConfig, world: SyntheticConfig) -> list[WorldProblem]:
    """Held-out problems for measuring the policy (a seed disjoint from the corpus seed)."""
    return generate_problems(world, cfg.eval.num_problems, seed=cfg.seed + 1_000_003, prefix="heldout")


def tokenizer_corpus(pairs: list[Example], extra: list[str]) -> list[str]:
    """Texts to train the tokenizer on: chat-formatted solutions and the rationale scaffolding.

    The fixed parts (system prompts, role names, scaffolding) are repeated so that BPE merges them.
    """
    texts = []
    for prompt, solution in pairs:
        if isinstance(prompt, str):
            texts.append(f"system\n{POLICY_SYSTEM_PROMPT}\nuser\n{prompt}\nassistant\n{solution}")
        else:
            turns = "\n".join(f"{m['role']}\n{m['content']}" for m in prompt)
            texts.append(f"{turns}\nassistant\n{solution}")
    repeats = max(1, len(pairs) // 10)
    texts.extend(extra * repeats)
    return texts


def run(
    cfg: BootstrapConfig, world: SyntheticConfig, exclude: set[str], out_dir: Path, critic_dir: Path
) -> dict[str, Any]:
    """Build, pretrain, save and measure the policy, then the GenPRM's base; returns the metrics dict."""
    import torch

    from components.world.criticbase import train_critic_base
    from components.world.pretrain import evaluate_policy, pretrain
    from components.world.smallmodel import build_model, count_parameters, train_tokenizer

    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    pairs = build_corpus(cfg, world, exclude)
    mix = corpus_mix(pairs)
    log.info("corpus: %d examples %s; error fraction %.2f", len(pairs), mix, cfg.error_fraction)
    tokenizer = train_tokenizer(tokenizer_corpus(pairs, RATIONALE_SCAFFOLD), cfg.vocab_size)
    model = build_model(cfg.model, tokenizer, seed=cfg.seed)
    log.info("model: %s, %d parameters", cfg.model.architecture, count_parameters(model))
    losses = pretrain(model, tokenizer, pairs, cfg.train, seed=cfg.seed)
    train_seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    heldout = eval_problems(cfg, world)
    accuracy = evaluate_policy(out_dir, heldout, cfg.eval, seed=cfg.seed)
    critic = train_critic_base(model, tokenizer, cfg.critic, world, exclude, critic_dir, out_dir)
    return {
        "parameters": count_parameters(model),
        "corpus_size": len(pairs),
        "corpus_mix": mix,
        "final_loss": losses[-1][1] if losses else float("nan"),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        **accuracy,
        **critic,
        "loss_curve": losses,
    }


def held_out_texts(prepared_dir: Path) -> set[str]:
    """Problem texts that must never be trained on: the test split and the ProcessBench test set."""
    from components.data.io import read_jsonl, read_parquet
    from components.data.records import normalize_text

    texts = set(read_parquet(prepared_dir / "test.parquet")["problem"])
    texts.update(rec["problem"] for _, rec in read_jsonl(prepared_dir / "processbench.jsonl"))
    return {normalize_text(t) for t in texts}


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: read params, train, save, write metrics and plots."""
    from components.data.io import write_json
    from components.platform.params import load_params, load_value

    params = load_params(params_path, overrides, ["bootstrap", "world"])
    cfg: BootstrapConfig = params["bootstrap"]
    exclude = held_out_texts(Path(load_value(params_path, overrides, "prepare.output_dir", str)))
    outs = [Path(cfg.output_dir), Path(cfg.critic.output_dir)]
    if outs[0].resolve() == outs[1].resolve():
        raise ConfigError("bootstrap.critic.output_dir: must differ from bootstrap.output_dir")
    partial = [out.with_name(out.name + ".partial") for out in outs]
    for tmp in partial:
        if tmp.exists():
            shutil.rmtree(tmp)
    metrics = run(cfg, params["world"], exclude, partial[0], partial[1])
    for out, tmp in zip(outs, partial, strict=True):
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    curve, critic_curve = metrics.pop("loss_curve"), metrics.pop("critic_loss_curve")
    write_json(Path("metrics/bootstrap.json"), metrics)
    points = [{"step": s, "loss": loss, "phase": "policy"} for s, loss in curve]
    offset = curve[-1][0] if curve else 0
    points += [{"step": offset + s, "loss": loss, "phase": "critic_base"} for s, loss in critic_curve]
    write_json(Path("plots/bootstrap_loss.json"), points)
    return metrics


# Fixed phrases of the GenPRM rationale format (DESIGN.md §3), so later stages tokenize them compactly.
RATIONALE_SCAFFOLD = [
    GENPRM_SYSTEM_PROMPT,
    "<analyze>\nLet's analyze the Paragraph 1 step by step: \n</analyze>\n<verify>\n"
    "Let's use python code to find any potential error:\n```python\nprint(3 + 4 == 7)\n```\n"
    "[Code Output]\n\n```\nTrue\n```\n</verify>\n<output>\n**Judgement**: $\\boxed{Yes}$\n</output>",
    "**Judgement**: $\\boxed{No}$ assert result == expected, f'step claims {claimed}' import sympy",
]
