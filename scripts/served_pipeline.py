"""Run pipeline stages with every model behind one OpenAI-compatible server (``vllm serve``).

    python scripts/served_pipeline.py --base-url http://127.0.0.1:8000/v1 --model models/policy \
        [--seeds none] [--stages prepare,rollout,label,synthesize,benchmark] [--set KEY=VALUE ...]

Every model of rollout (policy), label (completer), synthesize (the paper's LLM teacher) and benchmark
(the GenPRM and the Best-of-N policy) is configured as ``infra/paper/params.yaml`` configures a served
model: ``backend: openai``, ``model`` the served name (here also the local directory whose tokenizer
renders the prompts), ``base_url`` the server. ``--seeds none`` is for vLLM on CPU (a seeded request
prefilled in chunks kills its engine); on a GPU keep the default ``auto`` (a seed per request).

The CPU test (``tests/test_vllm.py``) and the GPU smoke run (``infra/gpu_smoke.sh``) both run this, so the
first GPU run changes only the device. Each stage is ``genprm <stage> --set ...`` in the working
directory; the script stops at the first stage that fails, with its exit code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STAGES = ("prepare", "rollout", "label", "synthesize", "benchmark")
ROLES = (
    "rollout.policy",
    "label.completer",
    "synthesize.teacher.model",
    "benchmark.genprm.model",
    "benchmark.best_of_n.policy",
)


def served_overrides(base_url: str, model: str, seeds: str = "auto", concurrency: int = 8) -> list[str]:
    """``KEY=VALUE`` overrides putting every model of the pipeline behind the server at ``base_url``."""
    out: list[str] = []
    for role in ROLES:
        out += [f"{role}.backend=openai", f"{role}.model={model}", f"{role}.base_url={base_url}"]
        out += [f"{role}.seeds={seeds}", f"{role}.max_concurrency={concurrency}"]
    out += [
        "synthesize.teacher.kind=llm",  # the paper's teacher: a served model, not the program teacher
        "benchmark.direct_model=null",  # one served model; the direct baseline would be another one
        "benchmark.teacher_ceiling=false",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="the served model name (a local model directory)")
    parser.add_argument("--seeds", default="auto", choices=["auto", "request", "none"])
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per stage")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in order")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra KEY=VALUE (all stages)"
    )
    parser.add_argument(
        "--no-quality",
        default="",
        help="comma-separated stages run with quality.enabled=false (a random teacher keeps nothing)",
    )
    args = parser.parse_args(argv)
    overrides = served_overrides(args.base_url, args.model, args.seeds, args.concurrency) + args.sets
    no_quality = set(filter(None, args.no_quality.split(",")))
    genprm = os.path.join(os.path.dirname(sys.executable), "genprm")
    for stage in filter(None, args.stages.split(",")):
        if stage not in STAGES:
            parser.error(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
        sets = overrides + (["quality.enabled=false"] if stage in no_quality else [])
        command = [genprm if os.path.exists(genprm) else "genprm", stage]
        for item in sets:
            command += ["--set", item]
        print(f"served_pipeline: genprm {stage}", flush=True)
        code = subprocess.run(command).returncode
        if code != 0:
            print(f"served_pipeline: genprm {stage} exited with {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
