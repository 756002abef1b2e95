"""The GenPRM's base of the offline world: skill corpus, claim-copy probe, steps 0 = the policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest_backends import build_tiny_model

from components.data.records import normalize_text
from components.platform.errors import ConfigError
from components.world.criticbase import CriticBaseConfig, claim_prompts, skill_corpus
from components.world.synthetic import SyntheticConfig, generate_problems, problem_text

WORLD = SyntheticConfig()


def test_claim_probe_expects_the_sentence_claim_copied_into_print() -> None:
    probes = claim_prompts(WORLD, 20)
    assert probes == claim_prompts(WORLD, 20), "the probe is fixed by its own seed"
    for messages, expected in probes:
        sentence = messages[-1]["content"].splitlines()[-1]
        found = re.search(r"(\d+) ([-+*/]) (\d+) = (\d+)", sentence)
        assert found is not None
        left, op, right, result = found.groups()
        assert expected == f"print({left} {op} {right} == {result})"


def test_skill_corpus_skips_held_out_problems() -> None:
    cfg = CriticBaseConfig(corpus_size=30, seed=5)
    assert len(skill_corpus(cfg, WORLD, set())) == 30
    drawn = generate_problems(WORLD, 30, seed=5, prefix="skills")
    held_out = {normalize_text(problem_text(p)) for p in drawn[:10]}
    assert len(skill_corpus(cfg, WORLD, held_out)) == 20
    for messages, answer in skill_corpus(cfg, WORLD, set()):
        text = " ".join(m["content"] for m in messages) + answer
        assert "<analyze>" not in text and "Judgement" not in text, "never the critique format"


@pytest.mark.parametrize("changes", [{"steps": -1}, {"lr": 0.0}, {"probe_problems": 0}])
def test_bad_settings_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"^bootstrap\.critic"):
        CriticBaseConfig(**changes)  # type: ignore[arg-type]


@pytest.mark.slow
def test_zero_steps_copies_the_policy(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.world.criticbase import train_critic_base

    tiny_model = build_tiny_model(tmp_path / "policy")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    out = tmp_path / "base"
    cfg = CriticBaseConfig(steps=0, probe_problems=4)
    metrics = train_critic_base(model, tokenizer, cfg, WORLD, set(), out, tiny_model)
    assert (out / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert metrics["claim_copy_base"] == metrics["claim_copy_policy"] and metrics["critic_loss_curve"] == []
