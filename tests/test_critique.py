"""The execute-and-continue loop against a scripted model and the real sandbox.

The scripted backend plays a model that follows the protocol (it is the model, not the loop, that is
scripted): it writes code, stops at the closing fence like a real backend with a stop string, and writes
its verdict from the code output it is shown. The sandbox is real, so namespaces, statuses and outputs
are what a trained GenPRM would see.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

import pytest

from components.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    TokenLogprob,
)
from components.method.critique import (
    VERIFY_PREFILL,
    Chain,
    CritiqueSettings,
    analyze_prefill,
    run_chains,
)
from components.method.rationale import CODE_STOP, VERDICT_PREFILL, format_turn
from components.method.scorer import (
    NO_VERDICT_REWARD,
    GenPRMScorer,
    ScoredSolution,
    ScorerConfig,
    scored_solution,
    verdict_stats,
)
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


class LengthBackend(Backend):
    """Plays ``script`` but runs into max_tokens unless the text ends by itself ("</output>"); records
    the sampling params of each call; ``logprobs(text)`` gives the tokens of a piece where wanted."""

    def __init__(self, script: Script, logprobs: Callable[[str], list[TokenLogprob] | None] | None = None):
        self.script, self.logprobs = script, logprobs
        self.calls = 0
        self.params: list[SamplingParams] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.calls += 1
        self.params.append(params)
        results = []
        for req in requests:
            assert req.messages is not None
            text = self.script(req.messages[-1]["content"], req.prefill)
            reason = "stop" if "</output>" in text else "length"
            for stop in params.stop:
                text = text.split(stop)[0]
            lps = self.logprobs(text) if self.logprobs else None
            results.append(GenerationResult([Sample(text, reason, 1, 8, lps)]))  # type: ignore[arg-type]
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
    assert first.reward == 1.0 and first.reward_source == "verdict_text" and not first.forced


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
    assert turn.verdict is None and turn.reward is None and turn.reward_source == "none"
    assert turn.forced and turn.text.endswith("</output>")  # the forced round was tried, in vain


def answers_when_asked(user: str, prefill: str) -> str:
    """A model that rambles past max_tokens, but states a verdict when the paper's prefill asks for it."""
    if prefill.endswith(VERDICT_PREFILL):
        return "{No}$\n</output>"
    return "<analyze>\nLet's analyze the Paragraph 1 step by step: this goes on and on"


def test_a_round_cut_by_max_tokens_gets_the_forced_verdict(sandbox: Sandbox) -> None:
    backend = LengthBackend(answers_when_asked)
    chain = Chain("Problem", ["x = 1", "x = 2"])
    run_chains(backend, [chain], CritiqueSettings(max_rounds=2), sandbox)
    assert [t.verdict for t in chain.turns] == [0, 0]
    assert all(t.forced and t.reward == 0.0 and t.reward_source == "verdict_text" for t in chain.turns)
    first = chain.turns[0].text
    assert first.endswith("and on\n</analyze>\n" + VERDICT_PREFILL + "{No}$\n</output>")
    assert backend.calls == 4  # per step: the cut round, then the verdict round
    assert backend.params[1].max_tokens < backend.params[0].max_tokens


def test_the_forced_verdict_reward_comes_from_its_logprobs(sandbox: Sandbox) -> None:
    def with_logprobs(text: str) -> list[TokenLogprob] | None:
        if not text.startswith("{"):
            return None
        return [
            TokenLogprob("{No", math.log(0.7), {"{No": math.log(0.7), "{Yes": math.log(0.3)}),
            TokenLogprob("}$\n", math.log(0.9), {}),
        ]

    chain = Chain("Problem", ["x = 1"])
    run_chains(
        LengthBackend(answers_when_asked, with_logprobs), [chain], CritiqueSettings(logprobs=2), sandbox
    )
    [turn] = chain.turns
    assert turn.verdict == 0 and turn.reward_source == "logprobs"
    assert turn.reward == pytest.approx(0.3)


def test_code_that_prints_a_verdict_does_not_judge_the_step(sandbox: Sandbox) -> None:
    def printer(user: str, prefill: str) -> str:
        if prefill.endswith(VERDICT_PREFILL):
            return "{No}$\n</output>"
        if "[Code Output]" in prefill:
            return "</verify>\n"  # the model itself states no verdict
        return "<verify>\n```python\nprint('```')\nprint('\\\\boxed{Yes}')" + CODE_STOP

    chain = Chain("Problem", ["x"])
    run_chains(ScriptedBackend(printer), [chain], CritiqueSettings(), sandbox)
    [turn] = chain.turns
    assert "\\boxed{Yes}" in turn.text  # the code's output is shown to the model ...
    assert turn.verdict == 0 and turn.forced  # ... but only the model's own words judge


class SeededBackend(Backend):
    """Like vLLM with per-request seeds: each sample is a function of its prompt and its seed alone."""

    seeding = "request"

    def __init__(self) -> None:
        self.seeds: list[list[int | None]] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        seeds = [req.seed for req in requests]  # the critique loop must give every request its own
        assert None not in seeds
        self.seeds.append(seeds)
        results = []
        for req, seed in zip(requests, seeds, strict=True):
            if req.prefill.endswith(VERDICT_PREFILL):
                text = "{Yes}$\n" if random.Random(seed).random() < 0.5 else "{No}$\n"
            else:
                text = "<analyze>\nfine\n</analyze>\n"
            results.append(GenerationResult([Sample(text, "stop", 1, 3)]))
        return results


def test_maj_at_n_samples_have_distinct_seeds_and_differ() -> None:
    backend = SeededBackend()
    scorer = GenPRMScorer(ScorerConfig(execute=False, logprobs=0), backend=backend)
    [scored] = scorer.score([("P", [f"step {i}" for i in range(6)])], samples=8)
    assert all(len(set(call)) == len(call) for call in backend.seeds)  # 8 chains, 8 seeds, every round
    rows = {tuple(sample) for sample in scored.samples}
    assert len(rows) > 1  # the 8 critiques differ: Maj@8 is not Pass@1
    again = GenPRMScorer(ScorerConfig(execute=False, logprobs=0), backend=SeededBackend())
    assert again.score([("P", [f"step {i}" for i in range(6)])], samples=8)[0].samples == scored.samples


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


def test_scorer_averages_samples_and_scores_missing_verdicts_as_wrong(sandbox: Sandbox) -> None:
    cfg = ScorerConfig(max_rounds=1)
    scorer = GenPRMScorer(cfg, backend=ScriptedBackend(verifier), sandbox=sandbox)
    [scored] = scorer.score([("P", ["total = 4", "total = total + 1"])], samples=3)
    assert scored.samples == [[1.0, 0.0]] * 3
    assert scored.rewards(2) == [1.0, 0.0]
    assert scored.code_runs == 6 and scored.code_failures == 0
    assert scored.source_counts == {"logprobs": 0, "verdict_text": 6, "none": 0, "cut": 0}

    def silent(user: str, prefill: str) -> str:
        return "I cannot decide."

    [blank] = GenPRMScorer(cfg, backend=ScriptedBackend(silent), sandbox=sandbox).score([("P", ["a"])])
    assert blank.rewards() == [0.0] and blank.missing_verdicts == 1  # a failure is never "correct"
    assert blank.source_counts["none"] == 1
    paper = ScorerConfig(max_rounds=1, missing_verdict_reward=0.5)  # the paper's code
    [half] = GenPRMScorer(paper, backend=ScriptedBackend(silent), sandbox=sandbox).score([("P", ["a"])])
    assert half.rewards() == [0.5]


def test_maj_at_n_leaves_samples_without_a_verdict_out_of_the_mean() -> None:
    scored = ScoredSolution([[0.9, None], [None, None], [0.7, 0.2]], [], 3, [], 0, 0, 0)
    assert scored.rewards() == pytest.approx([0.8, 0.2])
    assert scored.rewards(1) == pytest.approx([0.9, NO_VERDICT_REWARD])
    stats = verdict_stats([{"logprobs": 3, "none": 1}, {"logprobs": 4}])
    assert stats["missing"] == 1 and stats["turns"] == 8 and stats["missing_rate"] == 1 / 8
    assert stats["reward_source"] == "logprobs"
    assert verdict_stats([{"logprobs": 1, "verdict_text": 1}])["reward_source"] == "mixed"


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


def paper_model(user: str, prefill: str) -> str:
    """Follows the paper's prefills: analysis, then code, then the verdict from the code's output."""
    if prefill.endswith(VERDICT_PREFILL):
        output = re.findall(r"\[Code Output\]\n\n```\n(.*?)\n```", prefill, re.DOTALL)[-1]
        return "{Yes}$\n</output>" if output == "True" else "{No}$\n</output>"
    if prefill.endswith("```\n"):  # after the code output: the model closes the block
        return "</verify>\n<output>\n**Judgement**: $\\boxed{Yes}$"
    if prefill.endswith(VERIFY_PREFILL):
        step = user.splitlines()[-1]
        return f"print({step})" + CODE_STOP + "[Code Output] imagined"
    assert prefill.endswith("step by step:")  # no trailing space: the model writes it with the next word
    return " It adds up.\n</analyze>\n<verify>\nnever seen"


class RecordingBackend(ScriptedBackend):
    """A ScriptedBackend that keeps the sampling params of every call."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self.params: list[SamplingParams] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.params.append(params)
        return super().generate(requests, params)


def test_paper_decoding_prefills_give_the_training_format(sandbox: Sandbox) -> None:
    backend = RecordingBackend(paper_model)
    chain = Chain("Problem", ["1 + 1 == 2", "2 + 2 == 5"])
    run_chains(backend, [chain], CritiqueSettings(decoding="paper", max_rounds=2), sandbox)
    assert [t.verdict for t in chain.turns] == [1, 0]
    for k, (turn, step) in enumerate(zip(chain.turns, chain.steps, strict=True), start=1):
        output = "True" if k == 1 else "False"
        expected = format_turn(k, "It adds up.", [(f"print({step})", output)], k == 1)
        assert turn.text == expected  # byte for byte the text the teacher writes for SFT
        assert turn.rounds == 1 and turn.statuses == ["ok"] and turn.forced
    assert analyze_prefill(2) == "<analyze>\nLet's analyze the Paragraph 2 step by step:"
    stops = [p.stop for p in backend.params]  # analyze, verify, continue after the output, verdict
    assert stops[:4] == [["</analyze>\n"], [CODE_STOP, "</verify>"], [CODE_STOP, "</verify>"], ["</output>"]]
    assert backend.calls == 8


def test_paper_decoding_stops_at_max_rounds_and_without_execution(sandbox: Sandbox) -> None:
    def coder(user: str, prefill: str) -> str:
        if prefill.endswith(VERDICT_PREFILL):
            return "{No}$\n</output>"
        if prefill.endswith("step by step:"):
            return " ok\n</analyze>\n"
        opening = "" if prefill.endswith(VERIFY_PREFILL) else "```python\n"  # after an output: another
        return opening + "x = 1\nprint(x)" + CODE_STOP

    chain = Chain("Problem", ["a"])
    run_chains(ScriptedBackend(coder), [chain], CritiqueSettings(decoding="paper", max_rounds=2), sandbox)
    [turn] = chain.turns
    assert turn.rounds == 2 and turn.statuses == ["ok", "ok"] and turn.verdict == 0
    assert turn.text.count("[Code Output]") == 2
    assert turn.text.endswith("x = 1\nprint(x)\n```\n</verify>\n" + VERDICT_PREFILL + "{No}$\n</output>")
    nocode = Chain("Problem", ["a"])
    run_chains(ScriptedBackend(coder), [nocode], CritiqueSettings(decoding="paper", execute=False), sandbox)
    assert nocode.turns[0].statuses == [] and nocode.turns[0].verdict == 0


# ----- a conversation that outgrows the model's context window -----


def chars(request: GenerationRequest) -> int:
    """The 'tokens' of a prompt for WindowBackend: its characters."""
    assert request.messages is not None
    return sum(len(m["content"]) for m in request.messages) + len(request.prefill)


class WindowBackend(ScriptedBackend):
    """A ScriptedBackend with a context window of ``window`` characters, counting prompts in characters;
    it records every request and fails the test on one that does not fit."""

    def __init__(self, script: Script, window: int | None) -> None:
        super().__init__(script)
        self.window = window
        self.sent: list[int] = []  # the prompt length of every request, in order

    def context_window(self) -> int | None:
        return self.window

    def prompt_length(self, request: GenerationRequest) -> int | None:
        return chars(request)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        for request in requests:
            assert self.window is None or chars(request) + params.max_tokens <= self.window
            self.sent.append(chars(request))
        return super().generate(requests, params)


def verifies_or_answers(user: str, prefill: str) -> str:
    """``verifier``, which also states a verdict when the forced verdict prefill asks for one."""
    return "{Yes}$\n</output>" if prefill.endswith(VERDICT_PREFILL) else verifier(user, prefill)


STEPS = ["total = 20", "total = total + 2", "total = total + 1"]


def unlimited_run(sandbox: Sandbox) -> tuple[list[int], int, int]:
    """Verdicts without a window, the longest prompt of steps 1-2, and step 3's first prompt."""
    backend = WindowBackend(verifies_or_answers, None)
    chain = Chain("Problem", STEPS)
    run_chains(backend, [chain], CritiqueSettings(), sandbox)
    assert len(backend.sent) == 6  # a code round and a verdict round per step
    first_two, third = max(backend.sent[:4]), backend.sent[4]
    assert third > first_two  # the conversation grows with every turn
    return [t.verdict for t in chain.turns], first_two, third  # type: ignore[misc]


def test_a_round_that_does_not_fit_gives_way_to_the_forced_verdict(sandbox: Sandbox) -> None:
    verdicts, _, third = unlimited_run(sandbox)
    # Step 3's code round (max_tokens) does not fit; its verdict round (16 tokens) does.
    verdict_room = len(VERDICT_PREFILL) + 16
    backend = WindowBackend(verifies_or_answers, third + verdict_room)
    chain = Chain("Problem", STEPS)
    run_chains(backend, [chain], CritiqueSettings(max_tokens=verdict_room + 1), sandbox)
    assert [t.verdict for t in chain.turns[:2]] == verdicts[:2]
    last = chain.turns[2]
    assert last.forced and not last.cut and last.rounds == 0 and last.verdict == 1
    assert len(backend.sent) == 5


def test_a_chain_that_outgrows_the_window_is_cut_short(sandbox: Sandbox) -> None:
    verdicts, _, third = unlimited_run(sandbox)
    verdict_room = len(VERDICT_PREFILL) + 16
    backend = WindowBackend(verifies_or_answers, third + verdict_room - 1)  # not even the verdict fits
    chains = [Chain("Problem", STEPS), Chain("Problem", STEPS[:2])]
    run_chains(backend, chains, CritiqueSettings(max_tokens=verdict_room), sandbox)
    cut, whole = chains
    assert [t.verdict for t in cut.turns] == [*verdicts[:2], None]
    assert [t.cut for t in cut.turns] == [False, False, True] and cut.session is None
    assert [t.verdict for t in whole.turns] == verdicts[:2] and not any(t.cut for t in whole.turns)
    scored = [scored_solution([c]) for c in chains]
    stats = verdict_stats([s.source_counts for s in scored])
    assert (stats["missing"], stats["cut_by_context"], stats["turns"]) == (1, 1, 5)
