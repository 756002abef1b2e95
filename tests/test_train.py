"""The train stage (components/stages/train.py): SFT records in, a fine-tuned GenPRM out.

Fixture records follow the synthesize stage's contract exactly (TRL conversational format, one
user/assistant pair per step, the paper's rationale or the direct verdict as the assistant turn), built
from the synthetic world's ProcessBench records: steps before the injected error are judged Yes, the
rest No. Training runs the real SFTTrainer on the tests' tiny Qwen2; that it learns is checked by the
loss (whether the 1.15M small-world model learns the rationale format with the default params takes
minutes to show, so it is measured outside the test suite).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest_backends import build_tiny_model

from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.platform.config import build_config
from components.platform.errors import ConfigError, DataError
from components.world.synthetic import SyntheticConfig, generate_problems, make_processbench_record

torch.set_num_threads(1)
TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (-?\d+)")
PY_OP = {"+": "+", "-": "-", "*": "*", "/": "//"}


def verdict_text(ok: bool) -> str:
    """The assistant's closing block (the whole turn of a direct record)."""
    return f"<output>\n**Judgement**: $\\boxed{{{'Yes' if ok else 'No'}}}$\n</output>"


def rationale(index: int, step: str, problem: str, ok: bool) -> str:
    """A GenPRM turn in the paper's format: analysis, verifying code with its output, verdict."""
    match = EQUATION.search(step)
    assert match, step
    a, op, b, c = match.groups()
    expr = f"{a} {PY_OP[op]} {b}"
    value = eval(expr)  # digits and one operator from our own generator
    in_problem = re.search(rf"\b{b}\b", problem) is not None
    claim = f"The paragraph claims {a} {op} {b} = {c}."
    judgement = "This is correct." if ok else "This is incorrect: the step does not follow from the problem."
    return (
        f"<analyze>\nLet's analyze the Paragraph {index + 1} step by step: {claim} {judgement}\n</analyze>\n"
        "<verify>\nLet's use python code to find any potential error:\n```python\n"
        f"claimed = {c}\nprint({expr} == claimed)\nprint({b} in problem_numbers)\n```\n[Code Output]\n\n"
        f"```\n{value == int(c)}\n{in_problem}\n```\n</verify>\n{verdict_text(ok)}"
    )


def sft_record(pb: Any, direct: bool) -> dict[str, Any]:
    """One SFT record in the synthesize stage's format for a ProcessBench-style record."""
    first_wrong = pb.label if pb.label >= 0 else len(pb.steps)
    labels = [int(i < first_wrong) for i in range(len(pb.steps))]
    messages = [{"role": "system", "content": GENPRM_SYSTEM_PROMPT}]
    for i, (step, ok) in enumerate(zip(pb.steps, labels, strict=True)):
        messages.append({"role": "user", "content": f"{pb.problem}\n{step}" if i == 0 else step})
        turn = verdict_text(bool(ok)) if direct else rationale(i, step, pb.problem, bool(ok))
        messages.append({"role": "assistant", "content": turn})
    return {"id": f"{pb.id}-path", "problem_id": pb.id, "labels": labels, "messages": messages}


def sft_records(count: int, seed: int = 0, direct: bool = False) -> list[dict[str, Any]]:
    """``count`` SFT records from the synthetic world, half of them with one wrong step."""
    rng = random.Random(seed)
    world = SyntheticConfig()
    problems = generate_problems(world, count, seed=seed, prefix="sft")
    return [
        sft_record(make_processbench_record(p, rng, world, i % 2 == 0), direct)
        for i, p in enumerate(problems)
    ]


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------- assistant-only loss masks

# name -> (template file in TRL's chat_templates, or None for the tokenizer's own ChatML; end of turn;
# special tokens the template needs; bos token)
TEMPLATES: dict[str, tuple[str | None, str, list[str], str | None]] = {
    "chatml": (None, "<|im_end|>", [], None),
    "deepseek_r1_distill": (
        "deepseek_r1_distill.jinja",
        "<｜end▁of▁sentence｜>",
        ["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"],
        "<｜begin▁of▁sentence｜>",
    ),
    "llama3": (
        "llama3.jinja",
        "<|eot_id|>",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
    ),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def tokenizer_with_template(model_dir: Path, name: str) -> Any:
    """The tiny model's tokenizer, with the named chat template and the special tokens it uses."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template_file, end_of_turn, specials, bos = TEMPLATES[name]
    if template_file is not None:
        tokenizer.add_tokens(specials, special_tokens=True)
        tokenizer.chat_template = (TRL_TEMPLATES / template_file).read_text()
        tokenizer.bos_token, tokenizer.eos_token = bos, end_of_turn
    return tokenizer


def runs(tokenizer: Any, ids: list[int], mask: list[int], keep: int) -> list[str]:
    """The decoded runs of consecutive tokens whose mask bit is ``keep``."""
    pieces: list[list[int]] = []
    for i, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit == keep:
            if i == 0 or mask[i - 1] != keep:
                pieces.append([])
            pieces[-1].append(token)
    return [tokenizer.decode(p, skip_special_tokens=False) for p in pieces]


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("direct", [False, True])
def test_masks_cover_exactly_the_assistant_turns(tiny_model: Path, template: str, direct: bool) -> None:
    from components.method.sftdata import tokenize_conversation

    tokenizer = tokenizer_with_template(tiny_model, template)
    messages = sft_records(2, seed=3, direct=direct)[0]["messages"]
    out = tokenize_conversation(tokenizer, messages)
    # the template's own rendering, plus what its generation prompt adds before each assistant turn
    # (DeepSeek-R1-Distill: "<think>\n"; see test_training_renders_what_generation_sees)
    extra = GENERATION_EXTRA.get(template, "")
    with_extra = [{**m, "content": extra + m["content"]} if m["role"] == "assistant" else m for m in messages]
    rendered = tokenizer.apply_chat_template(with_extra, tokenize=True, return_dict=True)["input_ids"]
    assert out["input_ids"] == list(rendered)
    end_of_turn = TEMPLATES[template][1]
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(turns) >= 2
    # loss on each assistant turn: its content and its end-of-turn token, nothing else
    assert runs(tokenizer, out["input_ids"], out["assistant_masks"], 1) == [t + end_of_turn for t in turns]
    # the system and user turns (and the role headers) carry none
    masked_text = "".join(runs(tokenizer, out["input_ids"], out["assistant_masks"], 0))
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"] in masked_text
    assert GENPRM_SYSTEM_PROMPT in masked_text


GENERATION_EXTRA = {"deepseek_r1_distill": "<think>\n"}
"""What each template's generation prompt adds after the assistant header it renders in a conversation."""


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_training_renders_what_generation_sees(tiny_model: Path, template: str) -> None:
    """The text before every trained assistant turn ends exactly as the prompt the backends render to
    generate that turn (render_prompt: the chat template with add_generation_prompt=True). With the real
    DeepSeek-R1-Distill template that prompt ends in "<｜Assistant｜><think>\n", which a rendered
    conversation never holds: training must put it there too (without loss on it)."""
    from components.backends.base import GenerationRequest, render_prompt
    from components.method.sftdata import assistant_char_spans, tokenize_conversation

    tokenizer = tokenizer_with_template(tiny_model, template)
    messages = sft_records(2, seed=4)[0]["messages"]
    text, spans = assistant_char_spans(tokenizer, messages)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(turns) == len(spans) >= 2
    prompts = [render_prompt(tokenizer, GenerationRequest(messages=messages[:i])) for i in turns]
    # the first turn: the training text up to its content IS the generation prompt, character for character
    assert text[: spans[0][0]] == prompts[0]
    for i, (start, _), prompt in zip(turns, spans, prompts, strict=True):
        opened = prompt[len(tokenizer.apply_chat_template(messages[:i], tokenize=False)) :]
        assert text[:start].endswith(opened), f"turn {i}: generation opens with {opened!r}"
        assert text[start:].startswith(messages[i]["content"])
    if template == "deepseek_r1_distill":
        assert prompts[0].endswith("<｜Assistant｜><think>\n")
        assert text.count("<｜Assistant｜><think>\n") == len(turns)
    # token for token: the prompt the hf/vllm backends tokenize is a prefix of the training ids, and the
    # inserted tag carries no loss
    out = tokenize_conversation(tokenizer, messages)
    prompt_ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    assert out["input_ids"][: len(prompt_ids)] == prompt_ids
    assert not any(out["assistant_masks"][: len(prompt_ids)])
    assert out["assistant_masks"][len(prompt_ids)] == 1


def test_a_template_whose_generation_prompt_differs_is_refused(tiny_model: Path) -> None:
    from components.method.sftdata import tokenize_conversation
    from components.platform.errors import GenPRMError

    tokenizer = tokenizer_with_template(tiny_model, "chatml")
    # generation opens the turn with another role header than a rendered conversation has
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>model\n{% endif %}"
    )
    with pytest.raises(GenPRMError, match="training cannot render what generation sees"):
        tokenize_conversation(tokenizer, sft_records(1, seed=4)[0]["messages"])


def test_masks_follow_a_template_that_trims_contents(tiny_model: Path) -> None:
    from components.method.sftdata import tokenize_conversation

    tokenizer = tokenizer_with_template(tiny_model, "llama3")
    messages = [
        {"role": "user", "content": "Is 2 + 2 = 4 right?"},
        {"role": "assistant", "content": "  Yes, 2 + 2 = 4.\n"},
        {"role": "user", "content": "And 3 + 3 = 7?"},
        {"role": "assistant", "content": "No."},
    ]
    out = tokenize_conversation(tokenizer, messages)
    loss_runs = runs(tokenizer, out["input_ids"], out["assistant_masks"], 1)
    assert loss_runs == ["Yes, 2 + 2 = 4.<|eot_id|>", "No.<|eot_id|>"]


def test_sft_trainer_labels_follow_the_masks(tiny_model: Path, tmp_path: Path) -> None:
    """SFTTrainer's own dataset preparation turns the masks into labels: -100 off the assistant turns."""
    from trl import SFTTrainer

    from components.method.sftdata import build_dataset, tokenize_conversation
    from components.stages.train import TrainConfig, load_base, sft_args

    cfg = TrainConfig(base_model=str(tiny_model), report_to=[], max_steps=1, max_length=4096)
    model, tokenizer = load_base(cfg)
    conversations = [r["messages"] for r in sft_records(3, seed=5)]
    dataset, stats = build_dataset(tokenizer, conversations, cfg.max_length)
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, tmp_path / "scratch", "t"),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == 3
    for row, messages in zip(trainer.train_dataset, conversations, strict=True):
        expected = tokenize_conversation(tokenizer, messages)
        assert row["input_ids"] == expected["input_ids"]
        assert row["labels"] == [
            t if m else -100 for t, m in zip(expected["input_ids"], expected["assistant_masks"], strict=True)
        ]
    assert stats["loss_tokens"] == sum(sum(x != -100 for x in row["labels"]) for row in trainer.train_dataset)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    padded = batch["attention_mask"] == 0
    assert padded.any() and bool((batch["labels"][padded] == -100).all())


def test_truncation_keeps_the_start(tiny_model: Path) -> None:
    from components.method.sftdata import build_dataset, tokenize_conversation
    from components.stages.train import TrainConfig, load_base

    _, tokenizer = load_base(TrainConfig(base_model=str(tiny_model)))
    conversations = [r["messages"] for r in sft_records(1, seed=5)]
    first = tokenize_conversation(tokenizer, conversations[0])["assistant_masks"].index(1)
    _, full = build_dataset(tokenizer, conversations, 100_000)
    assert full["truncated"] == 0 and full["loss_tokens"] > 100
    _, cut = build_dataset(tokenizer, conversations, first + 5)
    assert (cut["examples"], cut["truncated"], cut["tokens"], cut["loss_tokens"]) == (1, 1, first + 5, 5)
    _, prompt_only = build_dataset(tokenizer, conversations, first)  # no loss left: SFTTrainer drops it
    assert (prompt_only["examples"], prompt_only["loss_tokens"]) == (0, 0)


# ------------------------------------------------------------------------------------- bad input

GOOD = json.dumps(sft_records(1)[0])


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        ([GOOD, "{not json"], 2, "malformed JSON"),
        ([GOOD, GOOD, json.dumps({"id": "x", "labels": [1]})], 3, "no 'messages' list"),
        ([json.dumps({"messages": []})], 1, "no 'messages' list"),
        ([json.dumps({"messages": [{"role": "user", "content": "hi"}]})], 1, "no assistant turn"),
        ([json.dumps({"messages": [{"role": "critic", "content": "hi"}]})], 1, "needs a role"),
        ([json.dumps({"messages": [{"role": "assistant", "content": 3}]})], 1, "content must be a string"),
        ([GOOD, "[1, 2]"], 2, "expected a JSON object"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, lines: list[str], line: int, message: str) -> None:
    from components.method.sftdata import read_sft

    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:{line}: .*{message}"):
        read_sft(path)


def test_missing_or_empty_input(tmp_path: Path) -> None:
    from components.method.sftdata import read_sft

    with pytest.raises(DataError, match=r"sft\.jsonl: file not found"):
        read_sft(tmp_path / "sft.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no SFT records"):
        read_sft(tmp_path / "empty.jsonl")


def test_read_sft_keeps_messages_and_max_records(tmp_path: Path) -> None:
    from components.method.sftdata import read_sft

    records = sft_records(5)
    conversations = read_sft(write_records(tmp_path / "sft.jsonl", records), max_records=3)
    assert conversations == [r["messages"] for r in records[:3]]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"lr": 0}, "train.lr"),
        ({"max_steps": 0}, "train.max_steps"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"warmup_ratio": 1.5}, "train.warmup_ratio"),
        ({"variant": "critic"}, "train.variant"),
        ({"lora": {"enabled": True, "r": 0}}, "train.lora"),
        ({"epoch": 3}, "unknown key 'epoch'"),
    ],
)
def test_config_errors_name_the_key(overrides: dict[str, Any], key: str) -> None:
    from components.stages.train import TrainConfig

    with pytest.raises(ConfigError, match=re.escape(key)):
        build_config(TrainConfig, overrides, "train")


def test_variant_picks_input_output_and_files() -> None:
    from components.stages.train import TrainConfig

    direct = build_config(TrainConfig, {"variant": "direct"}, "train")
    assert (direct.data_path, direct.model_dir, direct.suffix) == (
        Path("data/synthesize/sft_direct.jsonl"), Path("models/genprm_direct"), "_direct"
    )  # fmt: skip
    plain = TrainConfig()
    assert (plain.data_path, plain.model_dir, plain.suffix) == (
        Path("data/synthesize/sft.jsonl"), Path("models/genprm"), ""
    )  # fmt: skip


# ------------------------------------------------------------------------------ the stage end to end


def write_params(tmp_path: Path, **train: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": train}))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project dir (the cwd) with genprm and direct SFT records; MLflow pointed at a sqlite file in it."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_records(tmp_path / "data/synthesize/sft.jsonl", sft_records(12, seed=1))
    write_records(tmp_path / "data/synthesize/sft_direct.jsonl", sft_records(12, seed=1, direct=True))
    with _use_tracking_uri(uri):  # mlflow keeps the URI in a global: give the next tests the one they had
        yield tmp_path


@pytest.mark.slow
def test_stage_trains_saves_and_logs_to_mlflow(
    project: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.stages.train import main

    # No run active and no MLflow settings: the train stage logs where every stage does (the tracking
    # adapter's defaults: mlflow.db at the project root, experiment "genprm").
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    settings = dict(base_model=str(tiny_model), max_steps=6, logging_steps=2, batch_size=4, lr=1e-3)
    params = write_params(project, **settings)
    metrics = main(params, [])
    out = project / "models/genprm"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and model.config.use_cache
    assert not (project / "models/genprm.partial").exists()
    assert not (project / "models/genprm_direct").exists()
    saved = json.loads((project / "metrics/train.json").read_text())
    assert saved == metrics
    assert metrics["steps"] == 6 and metrics["examples"] == 12 and metrics["train_seconds"] > 0
    assert metrics["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert metrics["tokens"] > metrics["loss_tokens"] > 0
    curve = json.loads((project / "plots/train_loss.json").read_text())
    assert [p["step"] for p in curve] == [1, 2, 4, 6] and curve[-1]["loss"] == metrics["final_loss"]
    info = json.loads((out / "training_info.json").read_text())
    assert info["variant"] == "genprm" and info["base_model"] == str(tiny_model)

    # the trainer's own MLflow integration logged the run into the sqlite store
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("genprm")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == info["mlflow_run_id"] and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, round(m.value, 5)) for m in history] == [(p["step"], p["loss"]) for p in curve]
    assert run.data.params["learning_rate"] == "0.001" and run.data.tags["genprm.variant"] == "genprm"
    assert run.data.metrics["final/steps"] == 6
    assert mlflow.active_run() is None


@pytest.mark.slow
def test_direct_variant_learns(project: Path, tiny_model: Path) -> None:
    from components.stages.train import main

    params = write_params(project, base_model=str(tiny_model), report_to=[], max_steps=30, lr=3e-3)
    metrics = main(params, ["train.variant=direct", "train.batch_size=4"])
    assert (project / "models/genprm_direct/model.safetensors").exists()
    assert not (project / "models/genprm").exists() and not (project / "mlflow.db").exists()
    assert json.loads((project / "metrics/train_direct.json").read_text()) == metrics
    curve = json.loads((project / "plots/train_direct_loss.json").read_text())
    assert metrics["steps"] == 30 and len(curve) == 4  # steps 1, 10, 20, 30
    assert metrics["final_loss"] < 0.5 * metrics["first_loss"]


@pytest.mark.slow
def test_lora_adapters_are_merged_into_a_plain_checkpoint(project: Path, tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    from components.stages.train import main

    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    params = write_params(
        project, base_model=str(tiny_model), report_to=[], max_steps=3, lr=1e-2, warmup_ratio=0, lora=lora
    )
    metrics = main(params, [])
    out = project / "models/genprm"
    assert not (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    total = sum(p.numel() for p in base.parameters())
    assert 0 < metrics["trainable_params"] < total / 10
    changed = {
        name
        for (name, p), (_, q) in zip(base.named_parameters(), tuned.named_parameters(), strict=True)
        if not torch.equal(p, q)
    }
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)


def test_missing_records_fail_before_loading_the_model(project: Path) -> None:
    from components.stages.train import main

    params = write_params(project, base_model="no/such-model", report_to=[])
    (project / "data/synthesize/sft_direct.jsonl").unlink()
    with pytest.raises(DataError, match=r"sft_direct\.jsonl: file not found \(train\.direct_input\)"):
        main(params, ["train.variant=direct"])
    assert not (project / "models").exists()
