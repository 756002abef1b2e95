"""SFT records -> the pre-tokenized dataset the ``train`` stage hands to TRL's SFTTrainer.

Reads the conversational SFT records ``synthesize`` writes (``{"messages": [system, user, assistant,
user, assistant, ...]}``; bad lines raise DataError naming file and line) and tokenizes them with the
base model's own chat template into ``input_ids`` and ``assistant_masks``.

Assistant-only loss for any chat template: the conversation is rendered and tokenized with offsets; the
characters of each assistant message's content and of the end-of-turn text the template writes right
after it (``<|im_end|>``, ``<｜end▁of▁sentence｜>``, ``<|eot_id|>``...) are located by rendering the
conversation up to that message, and tokens inside them get mask 1. SFTTrainer accepts such a dataset
and turns the mask into labels (-100 elsewhere), so no template needs ``{% generation %}`` markers.

Training renders what generation sees. Every backend opens the GenPRM's turn with the template's
generation prompt (``add_generation_prompt=True``, ``components.backends.base.render_prompt``, and the
server's own template behind ``/v1/chat/completions``). Some templates open it with more than they
write before a rendered assistant message: DeepSeek-R1-Distill's adds ``<think>\n`` after
``<｜Assistant｜>`` at generation only. That extra text (the generation prompt minus the rendered
turn's header) is inserted before each assistant turn's content, without loss, so the tokens the model
learns to write follow exactly the text it is given at inference. ChatML, Llama 3 and most templates add
nothing, and their training text is the plain rendering. The one difference left is in earlier turns:
at inference the template re-renders them as ``<｜Assistant｜>content`` (without the tag), while the
training sequence, which trains every turn at once, carries the tag before each of them. A template
whose generation prompt is not the rendered header plus some text is refused (the two cannot agree).

    conversations = read_sft(Path("data/synthesize/sft.jsonl"))
    dataset, stats = build_dataset(tokenizer, conversations, max_length=2048)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.platform.errors import DataError, GenPRMError

if TYPE_CHECKING:  # heavy imports stay inside the functions that need them
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


def check_record(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The record's messages, checked: roles, string contents, at least one assistant turn."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: record has no 'messages' list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: messages[{i}] needs a role in {ROLES}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{i}].content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: record has no assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_sft(path: Path, max_records: int | None = None) -> list[list[dict[str, str]]]:
    """The conversations of an SFT jsonl file; bad lines raise DataError naming file and line."""
    from components.data.io import read_jsonl

    conversations = []
    for lineno, record in read_jsonl(path):
        conversations.append(check_record(record, f"{path}:{lineno}"))
        if max_records is not None and len(conversations) >= max_records:
            break
    if not conversations:
        raise DataError(f"{path}: no SFT records")
    return conversations


def render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool = False
) -> str:
    """``messages`` rendered by the tokenizer's chat template (with the generation prompt if asked)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)
    return text


def generation_extra(
    tokenizer: PreTrainedTokenizerBase, history: list[dict[str, str]], before: str, header: str
) -> str:
    """What generation writes after ``history`` beyond ``header`` (the rendered turn's text before its
    content): ``<think>\n`` for DeepSeek-R1-Distill, ``""`` for most templates.

    ``before`` is the rendering of ``history``; a generation prompt that does not extend ``before`` with
    ``header`` plus more text is a GenPRMError (training could not render what generation sees).
    """
    prompt = render(tokenizer, history, generation_prompt=True)
    opened = prompt[len(before) :] if prompt.startswith(before) else None
    if opened is None or not opened.startswith(header):
        raise GenPRMError(
            f"chat template of {tokenizer.name_or_path!r}: generation opens the assistant turn with "
            f"{opened!r} but a rendered assistant turn starts with {header!r}; training cannot render what "
            "generation sees"
        )
    return opened[len(header) :]


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The training text of the conversation and, per assistant message, the characters that carry loss.

    A span is the message's content plus the end-of-turn text the template writes right after it (up
    to the whitespace before the next message), located in the rendering of ``messages[: i + 1]``, which
    must extend the rendering of ``messages[:i]`` (true of ChatML, Llama 3, DeepSeek-R1 and most others).
    The training text is the rendering with each turn's ``generation_extra`` inserted before its content
    (module docstring), so it ends, before every content, exactly as the generation prompt does.
    """
    full = render(tokenizer, messages)
    spans = []
    extras: list[tuple[int, str]] = []  # (position in ``full``, text generation adds there)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i]) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise GenPRMError(
                f"chat template of {tokenizer.name_or_path!r} does not render conversations prefix by prefix "
                f"(message {i}); assistant-only loss needs it"
            )
        content = message["content"]
        if content not in upto[len(before) :]:
            content = content.strip()  # templates that trim (Llama 3)
        start = upto.rfind(content, len(before))
        if start < 0:
            raise GenPRMError(f"chat template of {tokenizer.name_or_path!r} altered assistant message {i}")
        end_of_turn = upto[start + len(content) :].rstrip()
        if not end_of_turn:
            log.warning("chat template writes no end-of-turn text after assistant turns: none is trained")
        extra = generation_extra(tokenizer, messages[:i], before, upto[len(before) : start]) if i else ""
        extras.append((start, extra))
        spans.append((start, start + len(content) + len(end_of_turn)))
    text, done, shift, shifted = "", 0, 0, []
    for (at, extra), (span_start, span_end) in zip(extras, spans, strict=True):
        text += full[done:at] + extra
        done, shift = at, shift + len(extra)
        shifted.append((span_start + shift, span_end + shift))
    return text + full[done:], shifted


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> dict[str, list[int]]:
    """``input_ids`` of the training text and ``assistant_masks`` (1: the token carries loss)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    masks = []
    for start, end in encoded["offset_mapping"]:
        masks.append(int(any(start < span_end and end > span_start for span_start, span_end in spans)))
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": masks}


def build_dataset(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]], max_length: int
) -> tuple[Dataset, dict[str, int]]:
    """The pre-tokenized dataset SFTTrainer trains on, and token counts (after truncation)."""
    from datasets import Dataset

    rows = [tokenize_conversation(tokenizer, messages) for messages in conversations]
    stats = {
        "examples": sum(1 in r["assistant_masks"][:max_length] for r in rows),  # SFTTrainer drops the rest
        "tokens": sum(min(len(r["input_ids"]), max_length) for r in rows),
        "loss_tokens": sum(sum(r["assistant_masks"][:max_length]) for r in rows),
        "truncated": sum(len(r["input_ids"]) > max_length for r in rows),
        "max_tokens": max(len(r["input_ids"]) for r in rows),
    }
    return Dataset.from_list(rows), stats
