#!/usr/bin/env bash
# Installs the engine (UNetSegmentationLib, command `unetseg`) into a virtual environment, CPU PyTorch first.
#
#   Resources/Tools/setup.sh [--cuda] [EXTRAS]
#
#   Resources/Tools/setup.sh plots,onnx      the command line, with PNG figures and ONNX Runtime (README: Set-up)
#   Resources/Tools/setup.sh test            everything the tests need (what .ci/run runs)
#   Resources/Tools/setup.sh --cuda onnx     with the CUDA build of PyTorch, for a machine with an NVIDIA GPU
#
# Why a script: the set-up must work the same on a new user's machine and here.
# - The environment is $UNETSEG_VENV, or .venv in the repository root, made with `python3 -m venv` when
#   missing: Debian 12 and Ubuntu 24.04 refuse `pip install` outside a virtual environment.
# - torch==2.13.0 comes first, so that the engine's loose `torch>=2.1` is already met and pip pulls no other
#   build. On Linux, plain `pip install torch` from PyPI is the CUDA build (several GB); the CPU build (about
#   190 MB) is on PyTorch's CPU wheel index, which is used whenever it can be reached. Where it cannot (a
#   machine that reaches only its own package mirror), torch comes from pip's configured index, with a note.
#   --cuda skips the CPU index: pip's configured index (PyPI: the CUDA build on Linux).
# - A torch 2.13.0 already in the environment is kept, so running the script again is quick.
# Environment: PYTHON (the interpreter that makes the venv; default python3), UNETSEG_VENV (its folder),
# UNETSEG_TORCH_CPU_INDEX (the CPU wheel index; default PyTorch's).
set -euo pipefail

TORCH_VERSION="2.13.0"
CPU_INDEX="${UNETSEG_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${UNETSEG_VENV:-$ROOT/.venv}"
BASE_PYTHON="${PYTHON:-python3}"

cuda=0
extras=""
for argument in "$@"; do
  case "$argument" in
    --cuda) cuda=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "setup.sh: unknown option $argument (see --help)" >&2; exit 2 ;;
    *) extras="$argument" ;;
  esac
done

note() { echo "setup.sh: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  command -v "$BASE_PYTHON" >/dev/null || { note "no $BASE_PYTHON found: install Python 3.10-3.13 (or set PYTHON=/path/to/python3)"; exit 1; }
  "$BASE_PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)' || {
    note "$BASE_PYTHON is Python $("$BASE_PYTHON" -c 'import platform; print(platform.python_version())'); the engine and its tests need 3.10-3.13 (set PYTHON=/path/to/python3.X)"
    exit 1
  }
  "$BASE_PYTHON" -m venv "$VENV" || {
    note "could not make a virtual environment at $VENV; on Debian/Ubuntu install python3-venv (sudo apt install python3-venv) and run this again"
    exit 1
  }
fi
PY="$VENV/bin/python"

installed_torch="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [ "${installed_torch%%+*}" = "$TORCH_VERSION" ]; then
  note "torch $installed_torch is already installed in $VENV"
elif [ "$cuda" = 1 ]; then
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
elif "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15)' "$CPU_INDEX" 2>/dev/null; then
  "$PY" -m pip install -q --index-url "$CPU_INDEX" "torch==$TORCH_VERSION"
else
  note "PyTorch's CPU wheel index ($CPU_INDEX) cannot be reached: torch $TORCH_VERSION comes from pip's configured index instead (from public PyPI on Linux that is the multi-GB CUDA build)"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi

"$PY" -m pip install -q -e "$ROOT${extras:+[$extras]}"
note "ready: $VENV/bin/unetseg (or activate the environment: . $VENV/bin/activate)"
