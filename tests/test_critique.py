"""The execute-and-continue loop against a scripted model and the real sandbox.

The scripted backend plays a model that follows the protocol (it is the model, not the loop, that is
scripted): it writes code, stops at the closing fence like a real backend with a stop string, and writes
its verdict from the code output it is shown. The sandbox is real, so namespaces, statuses and outputs
are what a trained GenPRM would see.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from components.backends.base import Backend, GenerationRequest, GenerationResult, Sample, SamplingParams
from components.method.critique import Chain, CritiqueSettings, run_chains
from components.method.rationale import CODE_STOP
from components.method.scorer import GenPRMScorer, ScorerConfig
from components.sandbox import Sandbox, SandboxConfig

Script = Callable[[str, str], str]


class ScriptedBackend(Backend):
    """Continues each request with ``script(last user turn, prefill)``, cut at the first stop string."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.calls += 1
        results = []
        for req in requests:
            assert req.messages is not None
            text = self.script(req.messages[-1]["content"], req.prefill)
            reason = "stop"
            for stop in params.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            results.append(GenerationResult([Sample(text, reason, 1, max(1, len(text) // 4))] * params.n))
        return results


def verifier(user: str, prefill: str) -> str:
    """Step text 'v = <expr>' -> code defining v and printing it; verdict Yes iff the output is even."""
    if "[Code Output]" in prefill:
        output = re.findall(r"\[Code Output\]\n\n```\n(.*?)\n```", prefill, re.DOTALL)[-1]
        word = "Yes" if output.strip().lstrip("-").isdigit() and int(output) % 2 == 0 else "No"
        return f"</verify>\n<output>\n**Judgement**: $\\boxed{{{word}}}$\n</output>"
    step = user.splitlines()[-1]
    return f"<analyze>\nchecking\n</analyze>\n<verify>\n```python\n{step}\nprint(total)" + CODE_STOP + "junk"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    with Sandbox(SandboxConfig(timeout_s=5, workers=2)) as box:
        yield box


def test_code_runs_output_is_fed_back_and_the_namespace_persists(sandbox: Sandbox) -> None:
    chain = Chain("Problem", ["total = 20", "total = total + 2", "total = total + 1"])
    run_chains(ScriptedBackend(verifier), [chain], CritiqueSettings(max_rounds=2), sandbox)
    assert [t.verdict for t in chain.turns] == [1, 1, 0]  # 20, 22, 23: step 3 reads step 2's variable
    first = chain.turns[0]
    assert "```python\ntotal = 20\nprint(total)\n```\n[Code Output]\n\n```\n20\n```\n</verify>" in first.text
    assert first.rounds == 1 and first.statuses == ["ok"]
    assert first.reward == 1.0 and first.reward_source == "text"


def test_errors_are_shown_to_the_model(sandbox: Sandbox) -> None:
    chain = Chain("Problem", ["total = undefined_name"])
    run_chains(ScriptedBackend(verifier), [chain], CritiqueSettings(), sandbox)
    [turn] = chain.turns
    assert turn.statuses == ["error"]
    assert "NameError" in turn.text and turn.verdict == 0


def test_rounds_are_bounded_and_a_missing_verdict_is_none(sandbox: Sandbox) -> None:
    def stubborn(user: str, prefill: str) -> str:
        return "```python\nprint(1)" + CODE_STOP

    chain = Chain("Problem", ["x"])
    run_chains(ScriptedBackend(stubborn), [chain], CritiqueSettings(max_rounds=3), sandbox)
    [turn] = chain.turns
    assert turn.rounds == 3 and len(turn.statuses) == 3
    assert turn.verdict is None and turn.reward is None


def test_without_execution_the_model_writes_on_and_nothing_runs(sandbox: Sandbox) -> None:
    def imaginer(user: str, prefill: str) -> str:
        imagined = (
            "[Code Output]\n\n```\n5\n```\n</verify>\n<output>\n**Judgement**: $\\boxed{Yes}$\n</output>"
        )
        return "```python\nprint(2 + 2)" + CODE_STOP + imagined

    chain = Chain("Problem", ["x"])
    run_chains(ScriptedBackend(imaginer), [chain], CritiqueSettings(execute=False), sandbox)
    [turn] = chain.turns
    assert turn.statuses == [] and turn.rounds == 1 and turn.verdict == 1
    assert "```\n5\n```" in turn.text  # the imagined output stays: nothing ran


def test_many_chains_advance_in_lockstep(sandbox: Sandbox) -> None:
    backend = ScriptedBackend(verifier)
    chains = [Chain("P", [f"total = {i}", "total = total * 2"]) for i in range(30)]
    run_chains(backend, chains, CritiqueSettings(), sandbox, threads=4)
    assert all(len(c.turns) == 2 for c in chains)
    assert [c.turns[0].verdict for c in chains] == [int(i % 2 == 0) for i in range(30)]
    assert all(c.turns[1].verdict == 1 for c in chains)
    assert backend.calls == 4  # 2 steps x (code round + verdict round), every chain in each call


def test_scorer_averages_samples_and_maps_missing_verdicts_to_half(sandbox: Sandbox) -> None:
    cfg = ScorerConfig(max_rounds=1)
    scorer = GenPRMScorer(cfg, backend=ScriptedBackend(verifier), sandbox=sandbox)
    [scored] = scorer.score([("P", ["total = 4", "total = total + 1"])], samples=3)
    assert scored.samples == [[1.0, 0.0]] * 3
    assert scored.rewards(2) == [1.0, 0.0]
    assert scored.code_runs == 6 and scored.code_failures == 0

    def silent(user: str, prefill: str) -> str:
        return "I cannot decide."

    [blank] = GenPRMScorer(cfg, backend=ScriptedBackend(silent), sandbox=sandbox).score([("P", ["a"])])
    assert blank.rewards() == [0.5] and blank.missing_verdicts == 1


@pytest.mark.timeout(120)
def test_more_chains_than_open_sessions_run_in_groups() -> None:
    # Each chain keeps its session until its last step; with more chains than sessions, a lockstep
    # round over all of them would wait forever for a session.
    with Sandbox(SandboxConfig(workers=2, max_sessions=4, preload=[])) as box:
        chains = [Chain("P", [f"total = {i}", "total = total + 1"]) for i in range(10)]
        run_chains(ScriptedBackend(verifier), chains, CritiqueSettings(), box, threads=4)
    assert [[t.verdict for t in c.turns] for c in chains] == [
        [int(i % 2 == 0), int(i % 2 == 1)] for i in range(10)
    ]
