"""The two schedulers of the critique loop (``components/method/critique.py``): lockstep and continuous.

Both advance :class:`~components.method.critique.Chain` objects round by round with the same seeds
(round r of a chain sends ``derive_seed(chain seed, r)``), prompts and sampling per phase; they differ
in what waits for what.

- ``run_lockstep`` (any backend): all open chains of a group take one round together, one batched
  ``Backend.generate`` per phase, then their code runs in the thread pool, then the next round. A
  round lasts as long as its slowest chain, the batch shrinks as chains finish, and every round
  re-encodes every conversation. Chains run in groups of at most ``sandbox.config.max_sessions`` (each
  keeps its session until its end).
- ``run_continuous`` (the hf backend): a continuous-batching engine
  (``components/backends/engine.py``) holds one slot per open chain; a chain whose round ends gets its
  code run in the pool while the others decode, and its next round is submitted one decode step
  later (a fixed lag, so the schedule, and with it every result, does not depend on thread timing); a
  finished chain's slot takes the next pending chain. A round's prompt reuses the KV of the chain's
  previous rounds.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from components.backends.base import derive_seed

if TYPE_CHECKING:
    from collections.abc import Hashable
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    from components.backends.base import Backend
    from components.method.critique import Chain, CritiqueSettings
    from components.sandbox import Sandbox


def supports_continuous(backend: Backend) -> bool:
    """Whether ``backend`` runs its model in this process with transformers (the engine needs it)."""
    from components.backends.hf import HFBackend

    return isinstance(backend, HFBackend)


def run_lockstep(
    backend: Backend,
    chains: list[Chain],
    settings: CritiqueSettings,
    sandbox: Sandbox | None,
    pool: ThreadPoolExecutor,
    bar: tqdm,
) -> int:
    """Lockstep rounds over groups of chains; returns the number of ``generate`` calls."""
    group = sandbox.config.max_sessions if sandbox is not None else max(1, len(chains))
    calls = 0
    for start in range(0, len(chains), group):
        calls += _lockstep_group(backend, chains[start : start + group], settings, sandbox, pool, bar)
    return calls


def _lockstep_group(
    backend: Backend,
    chains: list[Chain],
    settings: CritiqueSettings,
    sandbox: Sandbox | None,
    pool: ThreadPoolExecutor,
    bar: tqdm,
) -> int:
    from components.method.critique import fit_round

    calls, round_, window = 0, 0, backend.context_window()
    while active := [chain for chain in chains if not chain.done]:
        seed = derive_seed(settings.seed, "round", round_)
        before = sum(len(c.turns) for c in active)
        active = [c for c in active if fit_round(c, backend, settings, window)]
        phases = sorted({c.phase for c in active}, key=("free", "analyze", "verify", "verdict").index)
        for phase in phases:
            batch = [c for c in active if c.phase == phase]
            results = backend.generate(
                [c.request(settings.system) for c in batch], settings.phase_sampling(phase, seed)
            )
            calls += 1
            samples = [result.samples[0] for result in results]
            list(pool.map(lambda p: p[0].advance(p[1], settings, sandbox), zip(batch, samples, strict=True)))
        bar.update(sum(len(c.turns) for c in active) - before)
        round_ += 1
    return calls


def run_continuous(
    backend: Backend,
    chains: list[Chain],
    settings: CritiqueSettings,
    sandbox: Sandbox | None,
    pool: ThreadPoolExecutor,
    bar: tqdm,
) -> int:
    """Continuous batching over every chain (see the module docstring); returns the decode steps."""
    slots = max(1, int(getattr(getattr(backend, "cfg", None), "batch_size", 32)))
    if sandbox is not None:
        slots = min(slots, sandbox.config.max_sessions)
    from components.backends.engine import Engine
    from components.method.critique import fit_round

    engine = Engine(backend, min(slots, len(chains)) or 1)  # type: ignore[arg-type]
    pending = deque(chains)
    keys: dict[Hashable, Chain] = {id(chain): chain for chain in chains}
    running: list[tuple[Chain, Future[None], int]] = []
    steps, window = 0, backend.context_window()

    def submit(chain: Chain) -> bool:
        """Queue the chain's next round; False (the chain cut short) where it outgrew the window."""
        turns = len(chain.turns)
        if not fit_round(chain, backend, settings, window):
            bar.update(len(chain.turns) - turns)
            return False
        engine.submit(id(chain), chain.request(settings.system), settings.phase_sampling(chain.phase))
        return True

    def submit_pending() -> None:
        while pending and not submit(pending.popleft()):
            pass

    for _ in range(min(slots, len(pending))):
        submit_pending()
    while engine.busy or running:
        finished = engine.step() if engine.busy else []
        steps += 1
        for chain, future, turns in running:  # the pieces of the previous step, in order
            future.result()
            bar.update(len(chain.turns) - turns)
            if not chain.done and submit(chain):
                continue
            engine.release(id(chain))
            submit_pending()
        running = [
            (keys[key], pool.submit(keys[key].advance, sample, settings, sandbox), len(keys[key].turns))
            for key, sample in finished
        ]
    return steps
