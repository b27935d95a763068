#!/usr/bin/env bash
# One entry point for a fresh machine with only Python 3.11 and pip:
#   bash scripts/run.sh setup      install uv (if absent) and the pinned environment into .venv
#   bash scripts/run.sh pipeline   setup + `dvc repro` of the default (toy world) pipeline
#   bash scripts/run.sh test       setup + the test suite
set -euo pipefail
cd "$(dirname "$0")/.."

setup() {
  if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then
    echo "installing uv"; python3 -m pip install --quiet uv
  fi
  local uv="uv"; command -v uv >/dev/null 2>&1 || uv="python3 -m uv"
  local py; py=$(command -v python3.11 || command -v python3)
  [ -x .venv/bin/python ] || $uv venv --quiet -p "$py" .venv
  $uv pip sync --quiet -p .venv/bin/python requirements.lock
  $uv pip install --quiet -p .venv/bin/python --no-deps -e .
  export PATH="$PWD/.venv/bin:$PATH"
}

cmd=${1:-test}; shift || true
case "$cmd" in
  setup) setup ;;
  pipeline) setup; .venv/bin/dvc repro "$@" && .venv/bin/dvc metrics show ;;
  test) setup; .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: bash scripts/run.sh setup|pipeline|test [args]" >&2; exit 2 ;;
esac
