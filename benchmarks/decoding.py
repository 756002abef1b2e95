"""Free vs paper decoding of the GenPRM: ProcessBench F1, missing verdicts and tokens, in one process.

``ScorerConfig.decoding``: ``free`` lets the model write each turn on its own (a forced verdict round
only where a turn ends without a verdict); ``paper`` builds every turn from the paper's prefills
(``<analyze>`` with the paragraph index, ``<verify>`` with the opening code fence, the ``<output>``
verdict prefill). Both score the same records with the same model, sandbox, seeds and sampling;
prints Pass@1 F1 (error accuracy, correct accuracy), missing-verdict rate and generated tokens.

    python benchmarks/decoding.py --model models/genprm --records 100
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from components.backends.base import BackendConfig, make_backend
from components.method.processbench import evaluate, load_subset, predictions_from_rewards
from components.method.scorer import GenPRMScorer, ScorerConfig, verdict_stats
from components.platform.config import build_config
from components.sandbox import Sandbox, SandboxConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="models/genprm")
    parser.add_argument("--data", default="data/prepared/processbench.jsonl")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--decodings", default="free,paper", help="comma-separated: free, paper")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    records = load_subset(Path(args.data), args.records)
    model = build_config(BackendConfig, {"model": args.model, "batch_size": 64}, "benchmark.model")
    base = ScorerConfig(model=model, temperature=args.temperature, seed=args.seed)
    backend = make_backend(model)
    with backend, Sandbox(SandboxConfig(timeout_s=5.0, workers=2)) as sandbox:
        for decoding in args.decodings.split(","):
            scorer = GenPRMScorer(replace(base, decoding=decoding), backend=backend, sandbox=sandbox)
            start = time.perf_counter()
            scored = scorer.score([(r.problem, r.steps) for r in records], desc=decoding)
            seconds = time.perf_counter() - start
            preds = predictions_from_rewards(records, [s.rewards(1) for s in scored])
            f1 = evaluate({"processbench": records}, preds)["subsets"]["processbench"]
            stats = verdict_stats([s.source_counts for s in scored])
            tokens = sum(s.tokens for s in scored)
            print(
                f"{decoding}: F1 {100 * f1['f1']:.1f} (error acc {100 * f1['acc_error']:.1f}, "
                f"correct acc {100 * f1['acc_correct']:.1f}); missing verdicts {stats['missing']}/"
                f"{stats['turns']} ({100 * stats['missing_rate']:.1f}%); tokens {tokens} "
                f"({tokens / stats['turns']:.0f} per step); code runs {sum(s.code_runs for s in scored)}; "
                f"{seconds:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
