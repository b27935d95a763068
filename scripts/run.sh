#!/usr/bin/env bash
# One entry point for a fresh machine with only Python 3.11 and pip:
#   bash scripts/run.sh setup      install uv (if absent) and the pinned environment into .venv
#   bash scripts/run.sh pipeline   setup + the default (toy world) pipeline: `wsss repro` (= `dvc repro`, its
#                                  stages sharing one Prefect API instead of starting one each)
#   bash scripts/run.sh test       setup + the UI test's browser (Debian's chromium, when apt is usable) + the test suite
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

browser() {
  # tests/test_ui.py drives Debian's chromium (/usr/bin/chromium) with Playwright. Installed when missing and
  # apt is usable (root or passwordless sudo); never fails the set-up: without it that test skips, saying why
  # (the reason: the last line of .venv/chromium-install.log).
  local log=.venv/chromium-install.log sudo=""
  rm -f "$log"
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
    else echo "apt-get install chromium not tried: not root and no passwordless sudo" >"$log"; return 0; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then echo "apt-get install chromium not tried: no apt-get" >"$log"; return 0; fi
  echo "installing chromium (apt-get) for the UI test"
  local apt="$sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=120"
  if { $apt install -y --no-install-recommends chromium \
       || { $apt update && $apt install -y --no-install-recommends chromium; }; } >"$log" 2>&1; then
    rm -f "$log"
  else
    echo "apt-get install chromium failed: see $log" | tee -a "$log"
  fi
}

cmd=${1:-test}; shift || true
case "$cmd" in
  setup) setup ;;
  pipeline) setup; .venv/bin/wsss repro "$@" && .venv/bin/dvc metrics show ;;
  test) setup; browser; .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: bash scripts/run.sh setup|pipeline|test [args]" >&2; exit 2 ;;
esac
