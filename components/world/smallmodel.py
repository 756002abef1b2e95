"""Small models for the offline world: a trained BPE tokenizer and a tiny decoder-only transformer.

The tokenizer is byte-level BPE trained with ``tokenizers`` (digits split into single tokens, so the
model learns column arithmetic instead of memorising number tokens) with ChatML special tokens and a
chat template. The model is a Qwen2 or Llama architecture built from a config with a few million
parameters. Both are saved with ``save_pretrained`` and load back with ``AutoTokenizer`` /
``AutoModelForCausalLM.from_pretrained`` exactly like a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from components.platform.config import option

if TYPE_CHECKING:  # transformers takes seconds to import: only the functions that need it load it
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

# ChatML, as Qwen2 uses; the assistant turn may be prefilled by appending text after the prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the small model."""

    architecture: Literal["qwen2", "llama"] = option("qwen2", help="Decoder architecture to build.")
    hidden_size: int = option(128, help="Width of the residual stream.")
    num_layers: int = option(4, help="Number of transformer blocks.")
    num_heads: int = option(4, help="Attention heads per block.")
    num_kv_heads: int = option(4, help="Key/value heads (grouped-query attention when < num_heads).")
    intermediate_size: int = option(512, help="Width of the MLP.")
    max_position_embeddings: int = option(2048, help="Longest sequence the model accepts.")
    rope_theta: float = option(10000.0, help="RoPE base frequency.")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with single-digit tokens and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM of shape ``cfg`` for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model: PreTrainedModel
    if cfg.architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Servers that read sampling defaults from the model dir (transformers serve) only sample when this is
    # set; our in-process backends set every knob per request.
    model.generation_config.do_sample = True
    return model


def count_parameters(model: PreTrainedModel) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
