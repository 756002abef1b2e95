"""The ``train`` stage: supervised fine-tuning of the GenPRM on the synthesized conversations (TRL).

DESIGN.md §3/§5. Reads the SFT records that ``synthesize`` writes (TRL conversational format: a system
turn, then one user/assistant pair per step), fine-tunes the base model with TRL's ``SFTTrainer`` with the
loss on the assistant turns only, and saves the model and tokenizer with ``save_pretrained``.

    genprm train                                   # rationales: sft.jsonl -> models/genprm
    genprm train --set train.variant=direct        # baseline: sft_direct.jsonl -> models/genprm_direct
    genprm train --set train.max_steps=20 --set train.report_to=[]

At scale (``base_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B``, ``device: auto``, ``bf16: true``,
``gradient_checkpointing: true``, optionally ``lora.enabled: true``) on several GPUs:

    accelerate launch --config_file infra/accelerate/deepspeed_zero2.yaml -m components.platform.cli train

Loss on the assistant turns only, for any chat template (ChatML, DeepSeek-R1, Llama 3...): the records
are tokenized with the base model's own template into ``input_ids`` + ``assistant_masks``
(``components/method/sftdata.py``), a pre-tokenized dataset that SFTTrainer turns into labels itself.

Outputs: the model dir (``output_dir`` / ``direct_output_dir``, with ``training_info.json``: variant,
base model, MLflow run id), ``metrics/train.json`` (``metrics/train_direct.json``) and
``plots/train_loss.json`` (``plots/train_direct_loss.json``).

MLflow (``mlflow`` in ``report_to``): the trainer's own integration (transformers' MLflowCallback) logs
the training args and the loss curve into the ACTIVE run: under ``genprm train`` that is the stage's run
that ``components/platform/tracking.py`` opens; under ``accelerate launch`` the run of ``MLFLOW_RUN_ID``;
called without either (tests, notebooks), a new run with the defaults of every stage
(``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` at the project root; ``$MLFLOW_EXPERIMENT_NAME``, else
``genprm``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.method.sftdata import build_dataset, read_sft
from components.platform.config import option, section, to_dict
from components.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSettings:
    """Optional LoRA adapters (peft); merged into the base weights before saving."""

    enabled: bool = option(False, help="Train LoRA adapters instead of all weights.")
    r: int = option(16, help="LoRA rank.")
    alpha: int = option(32, help="LoRA alpha (scaling = alpha / r).")
    dropout: float = option(0.05, help="Dropout on the LoRA path.")
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="Module names that get adapters (Qwen2/Llama names).",
    )


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml."""

    variant: Literal["genprm", "direct"] = option(
        "genprm",
        help="'genprm': rationales from `input`; 'direct': verdict-only baseline from `direct_input`.",
    )
    base_model: str = option("models/base", help="Model dir or hub id to fine-tune.")
    input: str = option("data/synthesize/sft.jsonl", help="SFT records with rationales (variant genprm).")
    direct_input: str = option("data/synthesize/sft_direct.jsonl", help="Verdict-only SFT records (direct).")
    output_dir: str = option("models/genprm", help="Where the genprm variant is saved.")
    direct_output_dir: str = option("models/genprm_direct", help="Where the direct variant is saved.")
    max_records: int | None = option(None, help="Train on the first this many records only (null: all).")
    lr: float = option(3e-3, help="Peak learning rate (AdamW); paper: 2e-6 for the 1.5B/7B models.")
    lr_scheduler: str = option("cosine", help="transformers scheduler name (linear, cosine, constant...).")
    epochs: float = option(8.0, help="Passes over the records (ignored when max_steps > 0).")
    max_steps: int = option(-1, help="Optimizer steps; -1: from epochs.")
    batch_size: int = option(4, help="Per-device train batch size (small data: more updates help).")
    gradient_accumulation_steps: int = option(1, help="Micro-batches per optimizer step.")
    max_length: int = option(2048, help="Tokens per conversation; longer ones are truncated at the end.")
    warmup_ratio: float = option(0.05, help="Fraction of the steps spent in linear warm-up.")
    weight_decay: float = option(0.01, help="AdamW weight decay.")
    max_grad_norm: float = option(1.0, help="Gradient clipping norm.")
    seed: int = option(0, help="Seed for initialisation of adapters, shuffling and dropout.")
    logging_steps: int = option(10, help="Log (and plot) the loss every this many steps.")
    device: Literal["cpu", "auto"] = option("cpu", help="'cpu', or 'auto': the accelerator if present.")
    bf16: bool = option(False, help="bfloat16 mixed precision (GPU); fp32 when false.")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward (saves memory).")
    group_by_length: bool = option(True, help="Batch conversations of similar length (less padding).")
    threads: int = option(2, help="torch CPU threads (0: torch's default).")
    lora: LoraSettings = section(LoraSettings, help="Optional LoRA adapters.")
    report_to: list[str] = option(["mlflow"], help="Trainer integrations to log to ([] for none).")

    def __post_init__(self) -> None:
        positive = ("batch_size", "gradient_accumulation_steps", "max_length", "logging_steps")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "epochs"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}: must be > 0, got {getattr(self, key)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"train.max_steps: must be -1 (use epochs) or positive, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.max_records is not None and self.max_records < 1:
            raise ConfigError("train.max_records: must be at least 1 or null")
        if self.threads < 0:
            raise ConfigError("train.threads: must be >= 0")
        if self.lora.enabled and (self.lora.r < 1 or self.lora.alpha < 1 or not self.lora.target_modules):
            raise ConfigError("train.lora: need r >= 1, alpha >= 1 and at least one target module")

    @property
    def data_path(self) -> Path:
        """The SFT records of this variant."""
        return Path(self.input if self.variant == "genprm" else self.direct_input)

    @property
    def model_dir(self) -> Path:
        """Where this variant's model is saved."""
        return Path(self.output_dir if self.variant == "genprm" else self.direct_output_dir)

    @property
    def suffix(self) -> str:
        """'' or '_direct': names the metrics and plot files of the variant."""
        return "" if self.variant == "genprm" else "_direct"


# ----------------------------------------------------------------------------------- training


def sft_args(cfg: TrainConfig, scratch: Path, run_name: str) -> Any:
    """TRL ``SFTConfig`` from the params (checkpoints are not saved mid-run; the stage saves the end)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(scratch),
        run_name=run_name,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to=list(cfg.report_to) or "none",
        use_cpu=cfg.device == "cpu",
        bf16=cfg.bf16,
        fp16=False,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers' new name for it
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        assistant_only_loss=False,  # the dataset carries its own assistant_masks (see tokenize_conversation)
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def lora_config(cfg: LoraSettings) -> Any:
    """peft ``LoraConfig`` for the settings, or None when LoRA is off."""
    if not cfg.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )


def progress_callback() -> Any:
    """A TrainerCallback that logs step, loss and learning rate through this module's logger."""
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                log.info(
                    "step %d/%d  epoch %.2f  loss %.4f  lr %.2e",
                    state.global_step, state.max_steps, logs.get("epoch", 0.0), logs["loss"],
                    logs.get("learning_rate", 0.0),
                )  # fmt: skip

    return ProgressLog()


def load_base(cfg: TrainConfig) -> tuple[Any, Any]:
    """The base model (fp32 weights; bf16 is autocast) and its tokenizer."""
    from components.backends.hf import load_causal_lm, load_tokenizer
    from components.platform.errors import GenPRMError

    try:  # a missing or damaged directory (weights, tokenizer, config): one message naming the file
        tokenizer = load_tokenizer(cfg.base_model)
        model = load_causal_lm(cfg.base_model, "float32")
    except GenPRMError as exc:
        raise DataError(f"train.base_model: {exc}") from exc
    if not tokenizer.chat_template:
        raise DataError(f"train.base_model: {cfg.base_model!r} has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def loss_curve(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """``[{step, loss}]`` from the trainer's log history."""
    return [{"step": e["step"], "loss": round(e["loss"], 5)} for e in log_history if "loss" in e]


def is_main_process() -> bool:
    """True outside distributed runs and on global rank 0 under ``accelerate launch``/torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def mlflow_active() -> bool:
    """Whether an MLflow run is active in this process (without importing mlflow when it is not)."""
    import sys

    return "mlflow" in sys.modules and sys.modules["mlflow"].active_run() is not None


@contextlib.contextmanager
def mlflow_run(cfg: TrainConfig, run_name: str) -> Iterator[str | None]:
    """The MLflow run the trainer's MLflowCallback logs into (None when MLflow is off).

    The tracking adapter's process run: the stage's run under ``genprm train``, the run of
    ``MLFLOW_RUN_ID`` under ``accelerate launch``, else a new run with the project's defaults.
    """
    if "mlflow" not in cfg.report_to or not is_main_process():
        yield None
        return
    from components.platform.tracking import process_run

    tags = {"genprm.stage": "train", "genprm.variant": cfg.variant, "genprm.base_model": cfg.base_model}
    with process_run(run_name, tags) as run_id:
        yield run_id


def save(trainer: Any, cfg: TrainConfig, out_dir: Path) -> None:
    """Save the final model (LoRA merged into the weights) and the tokenizer with ``save_pretrained``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora.enabled:
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(out_dir)
    else:
        trainer.save_model(str(out_dir))  # every rank: gathers sharded weights under DeepSpeed
    if trainer.is_world_process_zero():
        model.config.use_cache = True  # gradient checkpointing turns it off; generation wants it
        model.config.save_pretrained(out_dir)
        trainer.processing_class.save_pretrained(out_dir)


def make_trainer(cfg: TrainConfig, scratch: Path, run_name: str) -> tuple[Any, dict[str, int]]:
    """SFTTrainer on the base model and this variant's records, and the dataset's token counts."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    model, tokenizer = load_base(cfg)
    dataset, stats = build_dataset(tokenizer, read_sft(cfg.data_path, cfg.max_records), cfg.max_length)
    log.info(
        "%s: %d conversations, %d tokens (%d with loss), %d truncated to %d", cfg.data_path,
        stats["examples"], stats["tokens"], stats["loss_tokens"], stats["truncated"], cfg.max_length,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, scratch, run_name),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        callbacks=[progress_callback()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout, which carries the metrics JSON
    return trainer, stats


def train_metrics(trainer: Any, stats: dict[str, int], seconds: float) -> dict[str, Any]:
    """The stage's metrics after ``trainer.train()`` took ``seconds``."""
    curve = loss_curve(trainer.state.log_history)
    epochs = trainer.state.epoch or 0.0
    return {
        **stats,
        "steps": trainer.state.global_step,
        "epochs": round(epochs, 3),
        "first_loss": curve[0]["loss"] if curve else float("nan"),
        "final_loss": curve[-1]["loss"] if curve else float("nan"),
        "train_seconds": round(seconds, 1),
        "steps_per_second": round(trainer.state.global_step / seconds, 3),
        "tokens_per_second": round(stats["tokens"] * epochs / seconds, 1),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


def train(cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Fine-tune ``cfg.base_model`` on the variant's records and save to ``out_dir``; the metrics.

    Also returns ``loss_curve`` ([{step, loss}]) and ``mlflow_run_id`` (None when MLflow is off).
    """
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_name = f"train-{cfg.variant}"
    scratch = out_dir.with_name(out_dir.name + ".trainer")
    own_run = not mlflow_active()
    with mlflow_run(cfg, run_name) as run_id:
        trainer, stats = make_trainer(cfg, scratch, run_name)
        log.info("fine-tuning %s (%s)", cfg.base_model, cfg.variant)
        started = time.perf_counter()
        trainer.train()
        metrics = train_metrics(trainer, stats, time.perf_counter() - started)
        if run_id is not None and own_run:
            import mlflow

            mlflow.log_metrics({f"final/{k}": float(v) for k, v in metrics.items()})
    save(trainer, cfg, out_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    curve = loss_curve(trainer.state.log_history)
    return {**metrics, "loss_curve": curve, "mlflow_run_id": run_id}


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: read params and records, train, save, write metrics."""
    from components.data.io import write_json
    from components.platform.params import load_params

    cfg: TrainConfig = load_params(params_path, overrides, ["train"])["train"]
    if not cfg.data_path.exists():  # fail before loading the model
        key = "input" if cfg.variant == "genprm" else "direct_input"
        raise DataError(f"{cfg.data_path}: file not found (train.{key})")
    out_dir = cfg.model_dir
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    metrics = train(cfg, partial)
    if not is_main_process():
        return metrics
    curve, run_id = metrics.pop("loss_curve"), metrics.pop("mlflow_run_id")
    info = {"variant": cfg.variant, "base_model": cfg.base_model, "data": str(cfg.data_path)}
    write_json(partial / "training_info.json", {**info, "mlflow_run_id": run_id, "config": to_dict(cfg)})
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    write_json(Path(f"metrics/train{cfg.suffix}.json"), metrics)
    write_json(Path(f"plots/train{cfg.suffix}_loss.json"), curve)
    log.info("saved %s: final loss %.4f after %d steps", out_dir, metrics["final_loss"], metrics["steps"])
    return metrics
