"""A tiny random chat model on disk for the backend tests and the generation benchmark.

``build_tiny_model(path)`` trains a byte-level BPE tokenizer on a few hundred synthetic arithmetic lines
(ChatML special tokens and chat template, from ``components.world.smallmodel``) and saves it with a
random-init
Qwen2 (hidden 32, 2 layers, 2 heads) into ``path``. The weights are redrawn with a larger spread than
the default init so greedy outputs vary between prompts and EOS shows up, which the tests need, and its
generation config has ``do_sample=True`` so that ``transformers serve`` honours a request's temperature.
``arithmetic_prompts(n)`` gives chat prompts in the same style.

Import it from a test module (``from conftest_backends import build_tiny_model``); it is not a conftest
that pytest loads by itself.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from components.world.smallmodel import ModelConfig, build_model, train_tokenizer

TINY_SHAPE = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64)
# vLLM's CPU attention kernels need a head size of at least 32 (head_dim 16 fails at the first request).
VLLM_SHAPE = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128)


def synthetic_lines(count: int = 400, seed: int = 0) -> list[str]:
    """Lines like 'Step 1: 3 + 4 = 7.' for training the tokenizer."""
    rng = random.Random(seed)
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
    lines = []
    for _ in range(count):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        sym, fn = rng.choice(ops)
        lines.append(f"Step {rng.randint(1, 6)}: {a} {sym} {b} = {fn(a, b)}. The answer is {fn(a, b)}.")
    return lines


def arithmetic_prompts(count: int, seed: int = 1) -> list[list[dict[str, str]]]:
    """Chat prompts (one user message each) asking small arithmetic questions of varied length."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        terms = [str(rng.randint(1, 50)) for _ in range(rng.randint(2, 6))]
        question = f"Compute {' + '.join(terms)} step by step."
        prompts.append([{"role": "user", "content": question}])
    return prompts


def build_tiny_model(path: Path, seed: int = 0, shape: ModelConfig = TINY_SHAPE) -> Path:
    """Save the tiny tokenizer and random model (``shape``) into ``path`` (created) and return it."""
    tokenizer = train_tokenizer(synthetic_lines(), vocab_size=300)
    model = build_model(shape, tokenizer, seed=seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5 if "embed" in name else 0.3)
    # `transformers serve` samples only when the model's generation config says do_sample=True (a request's
    # temperature alone does not turn sampling on); the in-process backends set every knob themselves.
    model.generation_config.do_sample = True
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path
