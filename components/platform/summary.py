"""A short summary a person can read of the metrics files a pipeline run wrote (``make run`` ends with it).

It reads ``metrics/*.json`` as the stages write them and prints, in order: ProcessBench F1 by system
(``genprm``, ``genprm_no_code``, ``direct``, the teacher's ceiling) and N (Pass@1, Maj@N) with the Pass@1
error / correct accuracy and the missing-verdict rate where the metrics have it; Best-of-N at the
largest N per problem set and the best PRM selector against majority voting; the label F1 (RPE vs
hard-MC); the synthesize kept rate; the refine stage's accuracy by turn (when ``metrics/refine.json``
exists); the register decision; and where the plots and reports are. A missing or unreadable file, or one
whose layout is not the expected one, is skipped with a note, never a traceback. Every metric stays
available through ``dvc metrics show``.

    genprm summary                  # in the checkout, after dvc repro
    genprm summary --root ../other-checkout
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# System order of the ProcessBench table; any other system in the metrics follows in name order.
SYSTEMS = ("genprm", "genprm_no_code", "direct", "teacher")
SYSTEM_NAMES = {"teacher": "teacher (ceiling)"}
PRM_SELECTORS = ("prm_last", "prm_min", "prm_mean", "weighted_vote")
REFERENCE_SELECTORS = ("majority", "pass_at_n", "random")
SELECTOR_NAMES = {"weighted_vote": "w_vote", "pass_at_n": "pass@N"}
METRICS_FILES = ("benchmark", "label", "synthesize", "refine", "register")
REPORTS = (
    "plots/*.json",
    "data/benchmark/*.png",
    "reports/refine/*.png",
    "reports/quality/data_docs/index.html",
    "data/synthesize/report.md",
)
LAST_LINE = "Every metric: dvc metrics show (all stages, all keys); plots as HTML: dvc plots show"

Metrics = dict[str, Any]


def load_metrics(root: Path, names: Iterable[str] = METRICS_FILES) -> tuple[dict[str, Metrics], list[str]]:
    """``name -> metrics dict`` of each ``metrics/<name>.json`` that exists and parses; notes for the rest."""
    loaded: dict[str, Metrics] = {}
    notes: list[str] = []
    for name in names:
        path = root / "metrics" / f"{name}.json"
        rel = f"metrics/{name}.json"
        if not path.is_file():
            notes.append(f"{rel}: not found (its stage has not run); skipped")
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            notes.append(f"{rel}: not readable as JSON ({exc}); skipped")
            continue
        if not isinstance(data, dict):
            notes.append(f"{rel}: holds a {type(data).__name__}, not an object; skipped")
            continue
        loaded[name] = data
    return loaded, notes


def num(value: Any, signed: bool = False) -> str:
    """A percentage (or any number) to one decimal; ``-`` for a missing or undefined value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _n_label(n: int) -> str:
    return "Pass@1" if n == 1 else f"Maj@{n}"


def _interval(bench: Metrics, system: str, n: int) -> list[float] | None:
    """The 95% interval of a system's mean F1 at Maj@n (``intervals.processbench.f1``), if any."""
    found = bench.get("intervals", {}).get("processbench", {}).get("f1", {}).get(system, {}).get(f"maj@{n}")
    if isinstance(found, dict) and all(isinstance(found.get(k), int | float) for k in ("lo", "hi")):
        return [float(found["lo"]), float(found["hi"])]
    return None


CONTRAST_NAMES = {
    "genprm_code_on_minus_off": "code on - off (Pass@1)",
    "genprm_minus_direct": "genprm - direct (Pass@1)",
    "teacher_minus_genprm": "teacher - genprm (Pass@1)",
}


def contrast_lines(bench: Metrics) -> list[str]:
    """The paired differences the paper's claims rest on, with their 95% intervals."""
    contrasts = bench.get("intervals", {}).get("processbench", {}).get("contrasts", {})
    lines = []
    for name, c in contrasts.items():
        if not isinstance(c, dict):
            continue
        label = CONTRAST_NAMES.get(name) or name.removeprefix("genprm_").replace("_minus_", " - ")
        label = label.replace("maj@1", "Pass@1").replace("maj@", "Maj@")
        lines.append(
            f"    {label:<28}{num(c.get('value'), signed=True):>7}  [{num(c.get('lo'))}, {num(c.get('hi'))}]"
        )
    return ["  differences on the same records (paired bootstrap, 95%):", *lines] if lines else []


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else None


def _missing_rate(bench: Metrics, system: str) -> Any:
    """The missing-verdict rate (%) of a system: ``verdicts.<system>.missing_rate``, or the teacher's own."""
    verdicts = bench.get("verdicts", {}).get(system, {})
    if isinstance(verdicts, dict) and "missing_rate" in verdicts:
        return verdicts["missing_rate"]
    return bench["processbench"].get(system, {}).get("missing_verdict_rate")


def processbench_lines(bench: Metrics) -> list[str]:
    """ProcessBench F1 by system and N, Pass@1 error/correct accuracy and missing-verdict rate."""
    pb: Metrics = bench["processbench"]
    systems = [s for s in SYSTEMS if s in pb] + sorted(set(pb) - set(SYSTEMS))
    ns = sorted({int(k.removeprefix("maj@")) for s in systems for k in pb[s] if k.startswith("maj@")})
    subsets = sorted({name for s in systems for name in pb[s].get("maj@1", {}).get("subsets", {})})
    missing = {s: _missing_rate(bench, s) for s in systems}
    header = f"  {'system':<20}" + "".join(f"{_n_label(n):>8}" for n in ns)
    header += f"{'err acc':>9}{'corr acc':>9}{'missing':>9}"
    lines = [f"ProcessBench F1 (%, mean over subsets: {', '.join(subsets) or '-'})", header]
    intervals: list[str] = []
    for s in systems:
        row = f"  {SYSTEM_NAMES.get(s, s):<20}"
        row += "".join(f"{num(pb[s].get(f'maj@{n}', {}).get('mean_f1')):>8}" for n in ns)
        accs = list(pb[s].get("maj@1", {}).get("subsets", {}).values())
        row += f"{num(_mean([a.get('acc_error') for a in accs])):>9}"
        row += f"{num(_mean([a.get('acc_correct') for a in accs])):>9}{num(missing[s]):>9}"
        lines.append(row)
        found = [(n, _interval(bench, s, n)) for n in ns]
        shown = [f"{_n_label(n)} [{num(ci[0])}, {num(ci[1])}]" for n, ci in found if ci]
        if shown:
            intervals.append(f"    {s}: " + "  ".join(shown))
    lines.append("  err acc / corr acc: Pass@1 accuracy on the records with / without an error;")
    lines.append(
        "  missing: % of judged steps without a verdict (scored benchmark.genprm.missing_verdict_reward)"
    )
    if intervals:
        lines += ["  95% bootstrap intervals of the mean F1:", *intervals]
    lines += contrast_lines(bench)
    if len(subsets) > 1:
        for name in subsets:
            scores = [pb[s].get("maj@1", {}).get("subsets", {}).get(name, {}) for s in systems]
            per = [f"{s} {num(sc.get('f1'))}" for s, sc in zip(systems, scores, strict=True)]
            lines.append(f"  Pass@1 F1 on {name}: " + ", ".join(per))
    source = bench.get("verdicts", {}).get("genprm", {}).get("reward_source")
    if source:
        lines.append(f"  genprm rewards read from: {source}")
    return lines


def best_of_n_lines(bench: Metrics) -> list[str]:
    """Best-of-N accuracy at the largest N of each problem set; the best PRM selector vs majority (with
    the paired 95% interval of the difference where the metrics have it)."""
    sets: Metrics = bench["best_of_n"]
    columns = [*PRM_SELECTORS, *REFERENCE_SELECTORS]
    header = f"  {'set (problems, N)':<24}" + "".join(f"{SELECTOR_NAMES.get(c, c):>9}" for c in columns)
    lines = ["Best-of-N accuracy (%) at the largest N", header + "  best PRM vs majority"]
    for name, selectors in sets.items():
        curves = {sel: accs for sel, accs in selectors.items() if isinstance(accs, dict)}
        ns = sorted({int(n) for accs in curves.values() for n in accs})
        if not ns:
            lines.append(f"  {name}: no accuracies")
            continue
        top = str(ns[-1])
        at = {sel: accs.get(top) for sel, accs in curves.items()}
        label = f"{name} ({selectors.get('problems', '?')}, N={top})"
        row = f"  {label:<24}" + "".join(f"{num(at.get(c)):>9}" for c in columns)
        prm = [(float(v), s) for s in PRM_SELECTORS if isinstance(v := at.get(s), int | float)]
        majority = at.get("majority")
        if prm and isinstance(majority, int | float):
            value, best = max(prm, key=lambda item: item[0])  # ties: the first in PRM_SELECTORS
            row += f"  {best} {num(value - majority, signed=True)}"
            ci = bench.get("intervals", {}).get("best_of_n", {}).get(name, {}).get("minus_majority", {})
            if isinstance(ci.get(best), dict):
                row += f" [{num(ci[best].get('lo'))}, {num(ci[best].get('hi'))}]"
        lines.append(row)
    return lines


def label_lines(label: Metrics) -> list[str]:
    """ProcessBench F1 of the RPE and hard-MC step labels (label.json holds fractions)."""
    pb = label["processbench"]

    def pct(kind: str) -> str:
        value = pb[kind]["f1"]
        return num(None if value is None else 100 * value)

    return [
        f"Label F1 vs true first errors ({pb.get('paths', '?')} ProcessBench paths): "
        f"RPE (epsilon {pb.get('epsilon', '?')}) {pct('rpe')}, hard-MC {pct('hard_mc')}"
    ]


def synthesize_lines(synth: Metrics) -> list[str]:
    """The consensus filter's kept rate."""
    rate = synth["kept_rate"]
    agreement = synth.get("step_agreement")
    kept = f"Synthesize: kept {synth['kept']} of {synth['paths']} paths ({num(100 * rate)}%)"
    if synth.get("consensus") is False:
        lines = [f"{kept}: no consensus filter (every fully judged path trains)"]
    else:
        lines = [f"{kept}: the consensus filter against {synth.get('labels', '?')}"]
    if isinstance(agreement, int | float):
        labels = synth.get("labels", "?")
        lines.append(
            f"  teacher verdicts agree with the {labels} on {num(100 * agreement)}% of steps "
            "(up to each path's first labelled error)"
        )
    return lines


def refine_lines(refine: Metrics) -> list[str]:
    """Accuracy by refinement turn per problem set and critic."""
    lines = ["Refine: accuracy (%) by turn"]
    for name, critics in refine["accuracy"].items():
        problems = refine.get("problems", {}).get(name, "?")
        for critic, turns in critics.items():
            order = sorted(turns, key=lambda t: int(t.removeprefix("turn_")))
            path = " -> ".join(num(turns[t]) for t in order)
            gain = refine.get("gain", {}).get(name, {}).get(critic)
            ci = refine.get("gain_ci95", {}).get(name, {}).get(critic)
            extra = f"  (gain {num(gain, signed=True)}" if gain is not None else ""
            if extra and isinstance(ci, list) and len(ci) == 2:
                extra += f", 95% CI [{num(ci[0])}, {num(ci[1])}]"
            lines.append(f"  {name} ({problems} problems), {critic:<12} {path}{extra + ')' if extra else ''}")
    return lines


def register_lines(reg: Metrics) -> list[str]:
    """The registry's decision on this run's GenPRM."""
    champion = reg.get("champion")
    return [
        f"Register: version {reg.get('version', '?')} {reg['decision']} "
        f"(champion: {'v' + str(champion) if champion is not None else 'none'}); {reg.get('reason', '')}"
    ]


def report_lines(root: Path) -> tuple[list[str], list[str]]:
    """Where the plots and reports are (those that exist), and notes for the expected ones that do not."""
    lines, notes = ["Plots and reports:"], []
    for pattern in REPORTS:
        found = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
        if found:
            lines += textwrap.wrap("  ".join(found), 106, initial_indent="  ", subsequent_indent="  ")
        elif not pattern.startswith("reports/refine"):
            notes.append(f"{pattern}: nothing there yet")
    return (lines if len(lines) > 1 else [*lines, "  none yet"]), notes


SECTIONS: tuple[tuple[str, str, Callable[[Metrics], list[str]]], ...] = (
    ("benchmark", "processbench", processbench_lines),
    ("benchmark", "best_of_n", best_of_n_lines),
    ("label", "label", label_lines),
    ("synthesize", "synthesize", synthesize_lines),
    ("refine", "refine", refine_lines),
    ("register", "register", register_lines),
)


def render(root: Path = Path(".")) -> str:
    """The whole summary as text."""
    metrics, notes = load_metrics(root)
    if "refine" not in metrics:  # an optional stage: absent is normal, not worth a note
        notes = [n for n in notes if not n.startswith("metrics/refine.json: not found")]
    blocks: list[list[str]] = []
    for name, part, section in SECTIONS:
        if name not in metrics:
            continue
        try:
            blocks.append(section(metrics[name]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            notes.append(f"metrics/{name}.json: no {part} summary (unexpected layout: {exc!r}); skipped")
    reports, missing = report_lines(root)
    blocks.append(reports)
    notes += missing
    out = ["GenPRM factory: run summary", ""]
    for block in blocks:
        out += [*block, ""]
    if notes:
        out += ["Skipped:", *(f"  {note}" for note in notes), ""]
    out.append(LAST_LINE)
    return "\n".join(out)
