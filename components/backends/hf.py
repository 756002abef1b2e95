"""In-process generation with transformers: batched, left-padded, deterministic with a seed.

``HFBackend(cfg)`` loads ``cfg.model`` (a local directory or hub id) with ``AutoModelForCausalLM`` and
``AutoTokenizer``; ``generate`` expands every request into ``n`` sequences, sorts them by prompt length
(longest first) so each batch of ``cfg.batch_size`` holds similar lengths, left-pads each batch, runs
``model.generate`` and returns results in the original request order.

Semantics (see ``components.backends.base``):

- temperature 0 is greedy; otherwise sampling with ``top_p`` and ``top_k`` (0 = off). Nothing is taken
  from the model's ``generation_config.json`` except the EOS ids: no hidden repetition penalty or top-k.
- Stop strings are passed to transformers' ``stop_strings`` (each sequence stops early on its own), and
  the decoded text is cut before the first stop string; EOS or a stop string give ``"stop"``.
- ``num_generated_tokens`` counts the tokens up to and including the EOS token or the token that
  completed the stop string.
- ``logprobs`` are the log-softmax of the model's RAW logits (before temperature, top-k, top-p), i.e.
  the model's own distribution at temperature 1 - the same convention as vLLM's default. A generated
  token's text is what it adds to the decoded text (``token_texts``: incremental decoding, so a
  character split over several byte tokens shifts nothing); alternatives are decoded one id at a time,
  and those whose decoded text collides keep the higher value.
- Seeds (``seeding`` "call"): ``torch.manual_seed`` runs at the start of every ``generate`` call, with
  ``params.seed`` when no request has its own seed, else with a seed mixed from ``params.seed`` and every
  request's seed; the same call (seeds, inputs, batch size) gives the same outputs on CPU. Every row of
  a batch draws its own random numbers, so identical prompts still give independent samples.
  ``cfg.seeds: none`` seeds nothing. ``cfg.seeds: request`` decodes through the continuous-batching
  engine instead, one generator per sample (``engine.generate_per_request``): vLLM's per-request seeds.

Every model load of the project (policy, completer, teacher, GenPRM, the base model of ``train``, the
pyfunc) goes through ``load_tokenizer`` / ``load_causal_lm``: a local directory is checked first
(``check_model_files``: config, JSON files, safetensors headers and sizes), and any failure of
``from_pretrained`` becomes one ``GenPRMError`` naming the path and what is wrong (the CLI: exit 2).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from components.backends.base import (
    Backend,
    BackendConfig,
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    TokenLogprob,
    check_local_model,
    cut_at_stop,
    derive_seed,
    prompt_ids,
)
from components.backends.window import config_window
from components.platform.errors import GenPRMError

log = logging.getLogger(__name__)

_DTYPES: dict[str, Any] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}


@dataclass
class _Logprobs:
    """Per-step log-probabilities of one batch: chosen token (B, T) and top-k values/ids (B, T, k)."""

    chosen: torch.Tensor
    top_values: torch.Tensor
    top_ids: torch.Tensor


# ----------------------------------------------------------------------------------- loading a model


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (transformers' messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


MODEL_JSON = frozenset(
    {
        "config.json",
        "generation_config.json",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "chat_template.json",
    }
)
"""The JSON files of a model directory that ``from_pretrained`` reads (plus ``*.index.json`` shard maps)."""


def check_safetensors(file: Path) -> None:
    """Raise GenPRMError naming ``file`` when its header is unreadable or the file is cut short."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0 or length > size - 8:
            raise GenPRMError(f"{file}: damaged weights file: truncated ({size} bytes, header unreadable)")
        try:
            header = json.loads(handle.read(length))
            end = max(
                (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise GenPRMError(f"{file}: damaged weights file: unreadable header ({_one_line(exc)})") from exc
    if 8 + length + end != size:
        raise GenPRMError(
            f"{file}: damaged weights file: {size} bytes where its header needs {8 + length + end} "
            f"({'truncated' if size < 8 + length + end else 'trailing bytes'})"
        )


def check_model_files(model: str) -> None:
    """For a local model directory: raise GenPRMError naming the first unreadable file in it.

    Checked without loading anything: the directory exists, it has ``config.json`` (or a PEFT
    ``adapter_config.json``), every JSON file ``from_pretrained`` reads (``MODEL_JSON``) parses, every
    ``*.safetensors`` has a readable header and exactly the bytes it describes. A hub id is left to
    ``from_pretrained``.
    """
    check_local_model(model)  # a path-like name without its directory: "model directory not found"
    path = Path(model).expanduser()
    if not path.is_dir():
        return  # a hub id
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise GenPRMError(f"{path}: not a saved model directory (no config.json)")
    read = [f for f in path.glob("*.json") if f.name in MODEL_JSON or f.name.endswith(".index.json")]
    for file in sorted(read):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise GenPRMError(f"{file}: damaged model file: not valid JSON ({_one_line(exc)})") from exc
    for file in sorted(path.glob("*.safetensors")):
        check_safetensors(file)


def load_tokenizer(model: str) -> Any:
    """``AutoTokenizer.from_pretrained(model)``; any failure is one GenPRMError naming ``model``."""
    check_model_files(model)
    try:
        return AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # tokenizers, json, OSError, ValueError...: all mean "cannot load it"
        raise GenPRMError(f"cannot load the tokenizer of {model}: {_one_line(exc)}") from exc


def load_causal_lm(model: str, dtype: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(model, dtype=dtype)``; any failure is one GenPRMError."""
    check_model_files(model)
    try:
        return AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    except Exception as exc:  # safetensors, torch, OSError, ValueError...: all mean "cannot load it"
        raise GenPRMError(f"cannot load model {model}: {_one_line(exc)}") from exc


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """What each token of ``ids`` adds to the decoded text; joined, they are ``decode(ids)``.

    Incremental decoding (as vLLM detokenizes): a token that ends inside a multi-byte character adds
    nothing until the character is complete, where decoding it alone would give a replacement character
    and shift every later text offset. Each step decodes only a short window, so this is linear.
    """
    texts: list[str] = []
    prefix, read = 0, 0  # the window ids[prefix:read] is already emitted text, kept for context
    for end in range(1, len(ids) + 1):
        seen = tokenizer.decode(ids[prefix:read])
        now = tokenizer.decode(ids[prefix:end])
        if len(now) > len(seen) and not now.endswith("\ufffd") and now.startswith(seen):
            texts.append(now[len(seen) :])
            prefix, read = read, end
        else:
            texts.append("")
    if read < len(ids):  # an incomplete character at the very end: emit what decoding gives
        texts[-1] = tokenizer.decode(ids[prefix:])[len(tokenizer.decode(ids[prefix:read])) :]
    return texts


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token id lists into ``(input_ids, attention_mask)`` with padding on the LEFT."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def length_order(lengths: list[int]) -> list[int]:
    """Indices sorted by length, longest first (stable, so equal lengths keep their order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class HFBackend(Backend):
    """transformers ``generate`` in this process; pass ``model``/``tokenizer`` to reuse loaded objects."""

    name = "hf"

    def __init__(self, cfg: BackendConfig, model: Any = None, tokenizer: Any = None) -> None:
        self.seeding: Literal["call", "request", "none"] = "call" if cfg.seeds == "auto" else cfg.seeds
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer(cfg.model)
        self.tokenizer.padding_side = "left"
        self.model = model if model is not None else self._load_model(cfg)
        self.model.eval()
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else self.eos_ids[0])
        self._pieces: dict[int, str] = {}

    @staticmethod
    def _load_tokenizer(model: str) -> Any:
        return load_tokenizer(model)

    def _load_model(self, cfg: BackendConfig) -> Any:
        if cfg.dtype not in _DTYPES:
            raise GenPRMError(f"backend.dtype: {cfg.dtype!r} is not one of {', '.join(_DTYPES)}")
        return load_causal_lm(cfg.model, _DTYPES[cfg.dtype]).to(self.device)

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            raise GenPRMError(f"model {self.cfg.model!r} defines no EOS token")
        return [int(e) for e in (eos if isinstance(eos, list) else [eos])]

    # ----- the interface -----

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One result per request (original order), ``params.n`` samples each."""
        if not requests:
            return []
        if self.seeding == "request":
            from components.backends.engine import generate_per_request

            return generate_per_request(self, requests, params)
        prompts = [self._encode(r) for r in requests]
        items = [(r, s) for r in range(len(requests)) for s in range(params.n)]
        order = length_order([len(prompts[r]) for r, _ in items])
        seed = self._call_seed(requests, params)
        if seed is not None:
            torch.manual_seed(seed)
        samples: dict[tuple[int, int], Sample] = {}
        size = max(1, self.cfg.batch_size)
        for start in range(0, len(order), size):
            chunk = [items[k] for k in order[start : start + size]]
            batch = self._generate_batch([prompts[r] for r, _ in chunk], params)
            samples.update(zip(chunk, batch, strict=True))
        return [GenerationResult([samples[(r, s)] for s in range(params.n)]) for r in range(len(requests))]

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def context_window(self) -> int | None:
        return None if self.model is None else config_window(self.model.config)

    # ----- internals -----

    def _call_seed(self, requests: list[GenerationRequest], params: SamplingParams) -> int | None:
        """The one torch seed of a call (see the module docstring); None: leave the generator as it is."""
        if self.seeding == "none":
            return None
        own = [r.seed for r in requests]
        if all(s is None for s in own):
            return params.seed
        return derive_seed(0 if params.seed is None else params.seed, *own)

    def _encode(self, request: GenerationRequest) -> list[int]:
        ids = prompt_ids(self.tokenizer, request)
        if not ids:
            raise GenPRMError("generation request: the prompt is empty")
        return ids

    def generation_config(self, params: SamplingParams) -> GenerationConfig:
        """The full GenerationConfig for ``params``; every sampling knob is set, none inherited."""
        sampling = not params.greedy
        return GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else 1.0,
            top_p=params.top_p if sampling else 1.0,
            top_k=params.top_k if sampling else None,
            min_p=0.0 if sampling else None,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            num_return_sequences=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            stop_strings=list(params.stop) or None,
            return_dict_in_generate=True,
            output_logits=params.logprobs is not None,
        )

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        input_ids, mask = left_pad(prompts, self.pad_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=self.generation_config(params),
                tokenizer=self.tokenizer if params.stop else None,
            )
        new = out.sequences[:, input_ids.shape[1] :].cpu()
        lps = self._logprobs(out.logits, new, params.logprobs) if params.logprobs is not None else None
        rows = range(len(prompts))
        return [self._sample(new[row].tolist(), len(prompts[row]), params, lps, row) for row in rows]

    @staticmethod
    def _logprobs(logits: tuple[torch.Tensor, ...], new: torch.Tensor, k: int) -> _Logprobs:
        chosen, values, ids = [], [], []
        for step, step_logits in enumerate(logits):
            lp = torch.log_softmax(step_logits.float(), dim=-1).cpu()
            chosen.append(lp.gather(1, new[:, step : step + 1]).squeeze(1))
            top = lp.topk(k, dim=-1) if k > 0 else None
            values.append(top.values if top is not None else lp[:, :0])
            ids.append(top.indices if top is not None else lp[:, :0].long())
        return _Logprobs(torch.stack(chosen, 1), torch.stack(values, 1), torch.stack(ids, 1))

    def _sample(
        self, gen: list[int], num_prompt: int, params: SamplingParams, lps: _Logprobs | None, row: int
    ) -> Sample:
        count, text, reason = self._finish(gen, params.stop)
        logprobs = None
        if lps is not None:
            texts = token_texts(self.tokenizer, gen[:count])
            logprobs = [
                TokenLogprob(
                    token=texts[t],
                    logprob=float(lps.chosen[row, t]),
                    top=self._top(lps.top_ids[row, t].tolist(), lps.top_values[row, t].tolist()),
                )
                for t in range(count)
            ]
        return Sample(text, reason, num_prompt, count, logprobs)

    def _finish(self, gen: list[int], stop: list[str]) -> tuple[int, str, Literal["stop", "length"]]:
        """(tokens generated, text, finish reason) of one row of ``generate``'s output."""
        eos_at = next((i for i, t in enumerate(gen) if t in self.eos_ids), None)
        ids = gen if eos_at is None else gen[:eos_at]
        count = len(gen) if eos_at is None else eos_at + 1
        reason: Literal["stop", "length"] = "length" if eos_at is None else "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if stop:
            cut, found = cut_at_stop(text, stop)
            if found:
                return self._stop_token_count(ids, stop), cut, "stop"
        return count, text, reason

    def _stop_token_count(self, ids: list[int], stop: list[str]) -> int:
        """The fewest leading tokens of ``ids`` whose decoded text already holds a stop string."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if cut_at_stop(self.tokenizer.decode(ids[:mid], skip_special_tokens=True), stop)[1]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _piece(self, token_id: int) -> str:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.tokenizer.decode([token_id])
        return piece

    def _top(self, ids: list[int], values: list[float]) -> dict[str, float]:
        top: dict[str, float] = {}
        for token_id, value in zip(ids, values, strict=True):
            piece = self._piece(token_id)
            top[piece] = max(value, top.get(piece, float("-inf")))
        return top
