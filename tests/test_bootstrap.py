"""Model tests for the bootstrap stage on tiny models: tokenizer, prefill boundary, training, save/load, main.

Training tests (``slow``) use a 30K-parameter Qwen2 (hidden 32, 2 layers) on a 300-solution corpus for a
few dozen steps on one thread: seconds each. They check the contract later stages rely on (a directory
that loads with ``from_pretrained`` and chats in ChatML, a falling loss, metrics in range), not quality.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest_project import TINY_OVERRIDES
from typer.testing import CliRunner

from components.data.records import normalize_text
from components.method.grading import extract_answer
from components.method.prompts import POLICY_SYSTEM_PROMPT, STEP_PREFILL, chat_messages, solution_text
from components.platform.cli import app
from components.platform.errors import DataError
from components.stages.bootstrap import (
    RATIONALE_SCAFFOLD,
    BootstrapConfig,
    EvalConfig,
    TrainConfig,
    build_corpus,
    corpus_mix,
    held_out_texts,
    main,
    run,
    tokenizer_corpus,
)
from components.stages.prepare import main as prepare_main
from components.world.criticbase import CriticBaseConfig
from components.world.pretrain import PAD_MULTIPLE, Example, collate, encode_example
from components.world.skills import SKILLS_SYSTEM_PROMPT, skill_document
from components.world.smallmodel import IM_END, IM_START, PAD, ModelConfig, train_tokenizer
from components.world.synthetic import SyntheticConfig, generate_problems, gold_steps, problem_text

WORLD = SyntheticConfig()
TINY_MODEL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64)


def tiny_config(bf16: bool = False, **changes: Any) -> BootstrapConfig:
    settings: dict[str, Any] = {
        "seed": 7,
        "corpus_size": 300,
        "vocab_size": 300,
        "threads": 1,
        "model": TINY_MODEL,
        "train": TrainConfig(steps=30, batch_size=8, warmup_steps=5, log_every=10, bf16_autocast=bf16),
        "eval": EvalConfig(num_problems=10, max_new_tokens=60, batch_size=10),
        "critic": CriticBaseConfig(steps=10, batch_size=8, warmup_steps=2, corpus_size=100, probe_problems=8),
    }
    return BootstrapConfig(**{**settings, **changes})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The test machine is shared: train and generate on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> list[Example]:
    return build_corpus(tiny_config(), WORLD, set())


@pytest.fixture(scope="module")
def tokenizer(corpus: list[tuple[str, str]]) -> Any:
    return train_tokenizer(tokenizer_corpus(corpus, RATIONALE_SCAFFOLD), vocab_size=300)


# ------------------------------------------------------------------------------------------- tokenizer


def test_digits_are_single_tokens(tokenizer: Any) -> None:
    text = "Step 2: 12345 + 678 = 13023, so 99 * 10 = 990."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) == text
    for piece in pieces:
        if any(c.isdigit() for c in piece):
            assert len(piece) == 1, f"multi-digit or mixed token {piece!r} in {pieces}"
    assert sum(any(c.isdigit() for c in p) for p in pieces) == sum(c.isdigit() for c in text)


def test_special_tokens_are_single_ids(tokenizer: Any) -> None:
    for token in (IM_START, IM_END, PAD):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [
            tokenizer.convert_tokens_to_ids(token)
        ]
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD
    assert tokenizer.bos_token is None


def test_chat_template_is_chatml(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "sys text"},
        {"role": "user", "content": "user text"},
        {"role": "assistant", "content": "Step 1: 1 + 1 = 2."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nsys text<|im_end|>\n"
        "<|im_start|>user\nuser text<|im_end|>\n"
        "<|im_start|>assistant\nStep 1: 1 + 1 = 2.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == rendered.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n"


def test_prefill_boundary_and_labels(tokenizer: Any, corpus: list[tuple[str, str]]) -> None:
    problem, solution = corpus[0]
    ids, labels = encode_example(tokenizer, problem, solution, loss_on="solution")
    assert len(ids) == len(labels)
    boundary = next(i for i, lab in enumerate(labels) if lab != -100)
    assert all(lab == -100 for lab in labels[:boundary])
    assert labels[boundary:] == ids[boundary:]
    prompt = tokenizer.apply_chat_template(chat_messages(problem), tokenize=False, add_generation_prompt=True)
    # Everything up to and including the prefill is prompt; the first label is the token after "Step 1: ".
    assert tokenizer.decode(ids[:boundary]) == prompt + STEP_PREFILL
    assert tokenizer.decode(ids[boundary:]) == solution[len(STEP_PREFILL) :] + IM_END + "\n"
    # The model learns to stop: the end-of-turn token carries a label.
    eos_positions = [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id and i >= boundary]
    assert eos_positions and all(labels[i] == tokenizer.eos_token_id for i in eos_positions)
    # The prompt's own <|im_end|> tokens (system and user turns) carry none.
    assert all(labels[i] == -100 for i, t in enumerate(ids[:boundary]) if t == tokenizer.eos_token_id)
    assert POLICY_SYSTEM_PROMPT in tokenizer.decode(ids[:boundary])


def test_loss_on_all_labels_everything(tokenizer: Any, corpus: list[tuple[str, str]]) -> None:
    problem, solution = corpus[1]
    ids, labels = encode_example(tokenizer, problem, solution, loss_on="all")
    assert labels == ids
    solution_ids, _ = encode_example(tokenizer, problem, solution, loss_on="solution")
    assert solution_ids == ids  # the tokens do not depend on where the loss is


def test_encode_rejects_solution_without_prefill(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="Step 1: "):
        encode_example(tokenizer, "What is 1 + 1?", "The answer is 2.", loss_on="solution")


def test_collate_pads_right_to_a_multiple(tokenizer: Any, corpus: list[tuple[str, str]]) -> None:
    batch = [encode_example(tokenizer, p, s, "solution") for p, s in corpus[:3]]
    out = collate(batch, tokenizer.pad_token_id)
    width = out["input_ids"].shape[1]
    assert width % PAD_MULTIPLE == 0 and width >= max(len(ids) for ids, _ in batch)
    for row, (ids, labels) in enumerate(batch):
        n = len(ids)
        assert out["input_ids"][row, :n].tolist() == ids
        assert out["labels"][row, :n].tolist() == labels
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (out["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (out["labels"][row, n:] == -100).all()


# ---------------------------------------------------------------------------------------------- corpus


def pair_text(pair: Example) -> str:
    """Everything a corpus pair shows the model: the prompt (or every message) and the answer."""
    prompt, answer = pair
    shown = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return f"{shown}\n{answer}"


def test_build_corpus_excludes_held_out_texts(corpus: list[Example]) -> None:
    assert len(corpus) == 300
    assert all(solution.startswith(STEP_PREFILL) for prompt, solution in corpus if isinstance(prompt, str))
    held_out = [problem_text(p) for p in generate_problems(WORLD, 300, seed=7, prefix="corpus")[::30]]
    assert sum(any(t in pair_text(pair) for t in held_out) for pair in corpus) >= 8
    exclude = {normalize_text(t) for t in held_out}
    kept = build_corpus(tiny_config(), WORLD, exclude)
    assert len(kept) == len(corpus) - len(held_out)
    # Neither a solution nor a skill document nor a feedback conversation is made from a held-out problem.
    assert not [pair for pair in kept if any(t in pair_text(pair) for t in held_out)]


def test_the_corpus_mixes_error_kinds_and_skill_documents() -> None:
    from components.world.mistakes import ALL_KINDS

    cfg = tiny_config(corpus_size=600, error_fraction=0.5, skills_fraction=0.2)
    pairs = build_corpus(cfg, WORLD, set())
    skills = [pair for pair in pairs if not isinstance(pair[0], str)]
    assert 0.13 <= len(skills) / len(pairs) <= 0.27
    assert all(pair[0][0]["content"] == SKILLS_SYSTEM_PROMPT for pair in skills)
    assert corpus_mix(pairs) == {"solutions": len(pairs) - len(skills), "feedback": 0, "skills": len(skills)}
    solutions = [pair for pair in pairs if isinstance(pair[0], str)]
    recheck = [s for _, s in solutions if ", not " in s]
    remarks = [s for _, s in solutions if "Check: " in s or "than at the start" in s]
    assert len(recheck) >= 10 and len(remarks) >= 30, "recomputed steps and side remarks are in the corpus"
    assert set(cfg.error_kinds) == set(ALL_KINDS)
    none = build_corpus(tiny_config(skills_fraction=0.0), WORLD, set())
    assert all(isinstance(prompt, str) for prompt, _ in none)
    only_fix = tiny_config(error_fraction=1.0, error_kinds={"silent_fix": 1.0}, skills_fraction=0.0)
    for (_, solution), problem in zip(
        build_corpus(only_fix, WORLD, set()),
        generate_problems(WORLD, 300, seed=7, prefix="corpus"),
        strict=True,
    ):
        assert extract_answer(solution) == str(problem.answer), "a silent fix keeps the final answer"
        assert solution != solution_text(gold_steps(problem)), "and holds an error"


def test_skill_documents_reach_the_tokenizer_and_train_on_the_answer_only(tokenizer: Any) -> None:
    messages, answer = skill_document(generate_problems(WORLD, 1, seed=2)[0], random.Random(0))
    ids, labels = encode_example(tokenizer, messages, answer, loss_on="solution")
    boundary = next(i for i, lab in enumerate(labels) if lab != -100)
    assert tokenizer.decode(ids[boundary:]) == answer + IM_END + "\n"
    texts = tokenizer_corpus([(messages, answer)], [])
    assert SKILLS_SYSTEM_PROMPT in texts[0] and answer in texts[0]
    # The tokenizer trained on a corpus with skill documents merges their code and output.
    plain = build_corpus(tiny_config(skills_fraction=0.0), WORLD, set())
    without = train_tokenizer(tokenizer_corpus(plain, RATIONALE_SCAFFOLD), vocab_size=300)
    snippet = "```python\nprint(7 + 5 == 12)\n```\nOutput:\n```\nTrue\n```"
    count = [len(t(snippet, add_special_tokens=False)["input_ids"]) for t in (tokenizer, without)]
    assert count[0] < count[1], count


def test_build_corpus_is_seeded() -> None:
    assert build_corpus(tiny_config(), WORLD, set())[:20] == build_corpus(tiny_config(), WORLD, set())[:20]
    other = build_corpus(tiny_config(seed=8), WORLD, set())[:20]
    assert other != build_corpus(tiny_config(), WORLD, set())[:20]


@pytest.fixture
def workdir(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp cwd holding a copy of the shipped params.yaml."""
    shutil.copy(repo_root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


PREPARE_TINY = [o for o in TINY_OVERRIDES if o.startswith("prepare.")]


def test_held_out_texts_reads_test_split_and_processbench(workdir: Path) -> None:
    prepare_main(Path("params.yaml"), PREPARE_TINY)
    prepared = workdir / "data" / "prepared"
    test = pd.read_parquet(prepared / "test.parquet")["problem"].tolist()
    bench = [
        json.loads(line)["problem"] for line in (prepared / "processbench.jsonl").read_text().splitlines()
    ]
    assert len(test) == 20 and len(bench) == 40
    held_out = held_out_texts(prepared)
    assert held_out == {normalize_text(t) for t in test + bench}
    train = pd.read_parquet(prepared / "train.parquet")["problem"].tolist()
    assert not {normalize_text(t) for t in train} & held_out


def test_held_out_texts_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "test.parquet"))):
        held_out_texts(tmp_path)


# ------------------------------------------------------------------------------------------ training run


@pytest.fixture(scope="module", params=[False, True], ids=["fp32", "bf16-autocast"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """``run`` on the tiny config: (metrics, saved policy dir); the GenPRM base is saved beside it."""
    out_dir = tmp_path_factory.mktemp("policy") / "policy"
    metrics = run(tiny_config(bf16=request.param), WORLD, set(), out_dir, out_dir.with_name("base"))
    return metrics, out_dir


@pytest.mark.slow
def test_run_saves_a_loadable_chat_model(trained: tuple[dict, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    _, out_dir = trained
    assert (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists()
    tokenizer: Any = AutoTokenizer.from_pretrained(out_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == IM_END and model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        chat_messages("What is 2 + 3?"), tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith(f"{IM_START}system\n{POLICY_SYSTEM_PROMPT}{IM_END}\n")
    assert prompt.endswith(f"{IM_START}assistant\n")
    ids = tokenizer(prompt + STEP_PREFILL, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_run_loss_goes_down_and_metrics_in_range(trained: tuple[dict, Path]) -> None:
    metrics, _ = trained
    curve = metrics["loss_curve"]
    assert [step for step, _ in curve] == [10, 20, 30]
    assert curve[0][1] > curve[-1][1]
    assert metrics["final_loss"] == curve[-1][1]
    for key in ("accuracy_greedy", "accuracy_sampled"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["parameters"] > 0
    assert metrics["corpus_size"] == 300
    assert metrics["eval_temperature"] == 0.7
    # The GenPRM base: 10 more steps on skill documents, measured beside the policy on the claim probe.
    assert [step for step, _ in metrics["critic_loss_curve"]] == [10]
    for key in ("claim_copy_policy", "claim_copy_base"):
        assert 0.0 <= metrics[key] <= 1.0


# ----------------------------------------------------------------------------------------------- main


@pytest.mark.slow
def test_main_end_to_end(workdir: Path) -> None:
    prepare_main(Path("params.yaml"), PREPARE_TINY)
    metrics = main(Path("params.yaml"), TINY_OVERRIDES)
    policy = workdir / "models" / "policy"
    assert (policy / "config.json").exists()
    assert (policy / "tokenizer.json").exists() and (policy / "tokenizer_config.json").exists()
    assert not (workdir / "models" / "policy.partial").exists()
    written = json.loads((workdir / "metrics" / "bootstrap.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert "loss_curve" not in written and 0.0 <= written["accuracy_greedy"] <= 1.0
    # The held-out problems (test split, ProcessBench) were kept out of the training corpus.
    assert written["corpus_size"] <= 300
    curve = json.loads((workdir / "plots" / "bootstrap_loss.json").read_text())
    assert [p["step"] for p in curve] == [5, 10, 15, 20, 30]
    assert [p["phase"] for p in curve] == ["policy"] * 4 + ["critic_base"]
    assert (workdir / "models" / "base" / "config.json").exists()
    assert all(isinstance(p["loss"], float) for p in curve)
    # A second run replaces the model directory cleanly.
    main(Path("params.yaml"), TINY_OVERRIDES)
    assert (policy / "config.json").exists() and not (workdir / "models" / "policy.partial").exists()
    assert not (workdir / "models" / "base.partial").exists()


def test_main_without_prepared_data_names_the_file(workdir: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(Path("data/prepared/test.parquet")))):
        main(Path("params.yaml"), TINY_OVERRIDES)
    assert not (workdir / "models").exists() and not (workdir / "metrics").exists()


def test_cli_without_prepared_data_exits_2(workdir: Path) -> None:
    args = ["bootstrap", "--params", "params.yaml"]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "data/prepared/test.parquet" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_bf16_autocast_only_where_the_cpu_has_native_bf16(caplog: pytest.LogCaptureFixture) -> None:
    """Emulated bf16 (an AVX2-only CPU) made a pretraining step ~20 s: autocast needs native support."""
    from components.world.pretrain import use_bf16_autocast

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert use_bf16_autocast(False) is False
    with caplog.at_level("INFO"):
        assert use_bf16_autocast(True) is native
    assert ("no native bf16" in caplog.text) is not native
