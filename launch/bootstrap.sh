#!/usr/bin/env bash
# Installs everything megaphi needs on a fresh Debian machine: system tools (Slurm, Open MPI,
# bubblewrap) and a virtual environment at .venv with the CPU build of torch pinned.
# Idempotent: a second run only checks. Set MEGAPHI_SKIP_APT=1 to leave the system alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
TORCH_PIN="torch==2.13.0"

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v slurmctld >/dev/null || need_apt+=(slurm-wlm)
command -v mpirun >/dev/null || need_apt+=(openmpi-bin libopenmpi-dev)
if [ "${MEGAPHI_SKIP_APT:-0}" != 1 ] && [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "[bootstrap] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.megaphi-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[bootstrap] pip install (torch pinned to ${TORCH_PIN#torch==})"
  .venv/bin/pip install -q --upgrade pip wheel setuptools "$TORCH_PIN"
  DS_BUILD_OPS=0 .venv/bin/pip install -q -e ".[dev]" "$TORCH_PIN"
  touch "$stamp"
fi
