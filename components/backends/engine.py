"""Continuous batching for the hf backend: fixed slots, a preallocated KV buffer, prefix reuse per slot.

``HFBackend.generate`` runs each batch until its longest member stops, re-encodes every prompt from
scratch, and grows its KV cache by concatenation (a full copy of the cache per layer per token). For a
loop of many short rounds over long, growing conversations (the critique loop), most of its time goes
there. :class:`Engine` decodes instead like a small serving engine:

- ``slots`` rows decode together, one token per step; a row that finishes hands its result back at
  once and its slot takes the next request, so the batch stays full.
- Keys and values live in one buffer per layer, ``(slots, heads, capacity, head_dim)``; each forward
  writes its new columns in place. A slot's tokens need not be contiguous: its valid columns are a
  mask (keys carry their rotary position), so a prefill of some slots leaves masked holes in the
  others; when the buffer is full, every slot's valid columns are packed to the right (and the buffer
  grows only if that is not enough).
- A request submitted under a ``key`` (one critique chain) reuses the KV of that key's slot for the
  longest common token prefix of its prompt and the slot's cached tokens: a round that appends a code
  output and the next user turn prefills only those tokens.

Sampling semantics are the hf backend's (raw-logit logprobs, stop strings, EOS, ``Sample`` fields: the
result is built by ``HFBackend._sample``). Seeds are per request: each request draws from its own
``torch.Generator`` seeded with its seed, so a chain's round means the same draw whatever runs beside
it (up to floating-point effects of the batch). Only ``n == 1`` and chat or raw prompts are supported.

    engine = Engine(backend, slots=64)
    engine.submit("chain-0", request, params)
    while engine.busy:
        for key, sample in engine.step():
            ...                                  # submit the key's next request, or engine.release(key)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from components.backends.kvbuffer import SlotCache, decode_mask, prefill_mask
from components.platform.errors import GenPRMError

if TYPE_CHECKING:
    from collections.abc import Hashable

    from components.backends.base import GenerationRequest, Sample, SamplingParams
    from components.backends.hf import HFBackend


@dataclass
class _Job:
    """One submitted request: its key, prompt token ids and sampling params."""

    key: Hashable
    ids: list[int]
    params: SamplingParams
    seed: int | None


@dataclass
class _Slot:
    """What one row of the buffer holds: cached token ids and their columns, and the job decoding there."""

    key: Hashable | None = None
    ids: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    job: _Job | None = None
    prompt_len: int = 0
    gen: list[int] = field(default_factory=list)
    chosen: list[float] = field(default_factory=list)
    top_values: list[torch.Tensor] = field(default_factory=list)
    top_ids: list[torch.Tensor] = field(default_factory=list)
    generator: torch.Generator | None = None
    tail: str = ""


class Engine:
    """Continuous-batching generation on an :class:`HFBackend`'s model (see the module docstring)."""

    def __init__(self, backend: HFBackend, slots: int, capacity: int = 512) -> None:
        self.backend = backend
        self.model = backend.model
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype = next(self.model.parameters()).dtype
        self.cache = SlotCache(
            config.num_hidden_layers, slots, heads, head_dim, capacity, dtype, backend.device
        )
        self.slots = [_Slot() for _ in range(slots)]
        self.queue: deque[_Job] = deque()
        self.prefill_tokens = 0
        self.reused_tokens = 0
        self.steps = 0

    # ----- the interface -----

    @property
    def busy(self) -> bool:
        """Whether any request is queued or decoding."""
        return bool(self.queue) or any(slot.job is not None for slot in self.slots)

    @property
    def free(self) -> int:
        """Slots that no key holds (a held slot keeps its KV for the key's next request)."""
        return sum(slot.key is None for slot in self.slots)

    def submit(self, key: Hashable, request: GenerationRequest, params: SamplingParams) -> None:
        """Queue ``request``; its result comes back from :meth:`step` with ``key``."""
        if params.n != 1:
            raise GenPRMError("engine: only n == 1 is supported (submit n requests)")
        self.queue.append(_Job(key, self.backend._encode(request), params, request.seed))

    def release(self, key: Hashable) -> None:
        """Free the slot ``key`` holds (its cached tokens are dropped)."""
        for index, slot in enumerate(self.slots):
            if slot.key == key and slot.job is None:
                self.slots[index] = _Slot()
                self.cache.clear_row(index)

    def step(self) -> list[tuple[Hashable, Sample]]:
        """Place queued requests in slots (one prefill forward), then decode one token in every busy
        slot; returns the requests that finished."""
        finished = self._place()
        decoding = [i for i, slot in enumerate(self.slots) if slot.job is not None and slot.gen]
        if decoding:
            finished += self._decode(decoding)
        return finished

    # ----- placing requests -----

    def _place(self) -> list[tuple[Hashable, Sample]]:
        """Put queued jobs into their key's slot or a free one; prefill their new tokens together."""
        placed: list[tuple[int, list[int]]] = []
        waiting: deque[_Job] = deque()
        while self.queue:
            job = self.queue.popleft()
            index = self._slot_for(job.key)
            if index is None:
                waiting.append(job)
                continue
            placed.append((index, self._reuse(index, job)))
        self.queue = waiting
        if not placed:
            return []
        return self._prefill(placed)

    def _slot_for(self, key: Hashable) -> int | None:
        own = [i for i, s in enumerate(self.slots) if s.key == key]
        if own:
            return own[0] if self.slots[own[0]].job is None else None
        free = [i for i, s in enumerate(self.slots) if s.key is None]
        if not free:  # evict an idle slot another key holds (its next request prefills in full)
            free = [i for i, s in enumerate(self.slots) if s.job is None]
            if not free:
                return None
            self.slots[free[0]] = _Slot()
            self.cache.clear_row(free[0])
        self.slots[free[0]].key = key
        return free[0]

    def _reuse(self, index: int, job: _Job) -> list[int]:
        """Keep the slot's KV for the common prefix of its tokens and ``job.ids``; the tokens to prefill."""
        slot = self.slots[index]
        common = 0
        limit = min(len(slot.ids), len(job.ids) - 1)  # at least one new token, for the next logits
        while common < limit and slot.ids[common] == job.ids[common]:
            common += 1
        self.cache.drop(index, slot.cols[common:])
        slot.ids, slot.cols = slot.ids[:common], slot.cols[:common]
        self.reused_tokens += common
        slot.job, slot.prompt_len, slot.gen = job, len(job.ids), []
        slot.chosen, slot.top_values, slot.top_ids, slot.tail = [], [], [], ""
        slot.generator = torch.Generator(device="cpu")
        seed = job.seed if job.seed is not None else int(torch.randint(0, 2**62, (1,)))
        slot.generator.manual_seed(seed % (2**63))
        return job.ids[common:]

    def _prefill(self, placed: list[tuple[int, list[int]]]) -> list[tuple[Hashable, Sample]]:
        """One forward over the new tokens of ``placed`` slots (left-padded to the longest)."""
        width = max(len(new) for _, new in placed)
        rows = [index for index, _ in placed]
        self._make_room(width)
        start = self.cache.t
        ids = torch.full((len(rows), width), self.backend.pad_id, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (index, new) in enumerate(placed):
            pad = width - len(new)
            ids[r, pad:] = torch.tensor(new, dtype=torch.long)
            done = len(self.slots[index].ids)
            positions[r, pad:] = torch.arange(done, done + len(new))
            self.slots[index].ids += new
            self.slots[index].cols += list(range(start + pad, start + width))
            self.prefill_tokens += len(new)
        new_valid = positions.new_zeros((len(rows), width), dtype=torch.bool)
        for r, (_, new) in enumerate(placed):
            new_valid[r, width - len(new) :] = True
        mask = prefill_mask(self.cache.mask[rows, :start], new_valid)
        logits = self._forward(ids, positions, mask, torch.tensor(rows))
        self.cache.mark(rows, start, new_valid)
        return self._take(rows, logits)

    def _make_room(self, width: int) -> None:
        """Compact the buffer when ``width`` more columns do not fit, or holes make up a third of it."""
        self.steps += 1
        holes = False
        if self.steps % 16 == 0 and self.cache.t > 64:
            holes = self.cache.t > 1.5 * int(self.cache.mask.sum(dim=1).max())
        if holes or self.cache.t + width > self.cache.capacity:
            moved = self.cache.compact(width)
            for index, slot in enumerate(self.slots):
                slot.cols = [moved[index][c] for c in slot.cols]

    # ----- decoding -----

    def _decode(self, rows: list[int]) -> list[tuple[Hashable, Sample]]:
        """One token for each of ``rows`` (every slot runs the forward; idle ones write masked columns)."""
        self._make_room(1)
        start = self.cache.t
        every = len(rows) * 4 >= len(self.slots)
        batch = list(range(len(self.slots))) if every else rows
        ids = torch.full((len(batch), 1), self.backend.pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), 1), dtype=torch.long)
        for r, index in enumerate(batch):
            slot = self.slots[index]
            if index in rows:
                ids[r, 0] = slot.gen[-1]
                positions[r, 0] = len(slot.ids)
                slot.ids.append(slot.gen[-1])
                slot.cols.append(start)
        valid = torch.tensor([[index in rows] for index in batch])
        mask = decode_mask(self.cache.mask[batch, :start])
        logits = self._forward(ids, positions, mask, None if every else torch.tensor(batch))
        self.cache.mark(batch, start, valid)
        chosen = [r for r, index in enumerate(batch) if index in rows]
        return self._take(rows, logits[chosen])

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """The model's last-position logits for ``ids`` written at the buffer's next columns."""
        device = self.backend.device
        self.cache.rows = None if rows is None else rows.to(device)
        with torch.no_grad():
            out = self.model(
                input_ids=ids.to(device),
                position_ids=positions.to(device),
                attention_mask={"full_attention": mask.to(device)},
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.cache.advance(ids.shape[1])
        return out.logits[:, -1, :].float().cpu()

    def _take(self, rows: list[int], logits: torch.Tensor) -> list[tuple[Hashable, Sample]]:
        """Sample the next token of each row from its logits; return the rows that finished."""
        from components.backends.sampling import next_tokens

        jobs = [self.slots[i].job for i in rows]
        params = [job.params for job in jobs if job is not None]
        generators = [self.slots[i].generator for i in rows]
        tokens, logprobs = next_tokens(logits, params, generators)
        finished = []
        for r, index in enumerate(rows):
            slot = self.slots[index]
            slot.gen.append(int(tokens[r]))
            if slot.job is not None and slot.job.params.logprobs is not None:
                chosen, values, top = logprobs[r]
                slot.chosen.append(chosen)
                slot.top_values.append(values)
                slot.top_ids.append(top)
            if self._stops(slot):
                finished.append((slot.job.key if slot.job else None, self._result(slot)))
        return finished

    def _stops(self, slot: _Slot) -> bool:
        job = slot.job
        assert job is not None
        token = slot.gen[-1]
        if token in self.backend.eos_ids or len(slot.gen) >= job.params.max_tokens:
            return True
        if not job.params.stop:
            return False
        slot.tail = (slot.tail + self.backend._piece(token))[-4 * max(map(len, job.params.stop)) :]
        return any(stop in slot.tail for stop in job.params.stop)

    def _result(self, slot: _Slot) -> Any:
        """The finished row as a ``Sample`` (the hf backend's own construction); the slot stays held."""
        from components.backends.hf import _Logprobs

        job = slot.job
        assert job is not None
        lps = None
        if job.params.logprobs is not None:
            lps = _Logprobs(
                torch.tensor([slot.chosen]),
                torch.stack(slot.top_values).unsqueeze(0),
                torch.stack(slot.top_ids).unsqueeze(0),
            )
        sample = self.backend._sample(slot.gen, slot.prompt_len, job.params, lps, 0)
        slot.job = None  # the last generated token is not in the cache: the next prompt re-reads it
        return sample


def generate_per_request(
    backend: HFBackend, requests: list[GenerationRequest], params: SamplingParams
) -> list[Any]:
    """``HFBackend.generate`` with ``seeds: request``: every sample draws from a generator of its own.

    Sample ``i`` of a request with seed ``s`` is seeded ``s + i`` (``sample_seed``, vLLM's rule), so its
    text depends on its prompt, the params and that seed alone, not on the call around it (up to
    floating-point effects of the batch): ``n=8, seed=s`` and ``n=4`` at ``s`` then ``s + 4`` give the
    same eight samples. The samples decode through one :class:`Engine` of ``batch_size`` slots.
    """
    import dataclasses

    from components.backends.base import GenerationResult, request_seeds, sample_seed

    one = dataclasses.replace(params, n=1)
    engine = Engine(backend, max(1, min(backend.cfg.batch_size, len(requests) * params.n)))
    for r, seed in enumerate(request_seeds(requests, params)):
        for i in range(params.n):
            engine.submit((r, i), dataclasses.replace(requests[r], seed=sample_seed(seed, i)), one)
    samples: dict[tuple[int, int], Sample] = {}
    while engine.busy:
        for key, sample in engine.step():
            samples[key] = sample  # type: ignore[index]
            engine.release(key)
    return [GenerationResult([samples[(r, i)] for i in range(params.n)]) for r in range(len(requests))]
