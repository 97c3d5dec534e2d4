#!/usr/bin/env bash
# The quickstart command of README.md: installs what is missing, then runs the whole recipe at toy
# scale on the CPU (see launch/quickstart.py for each step).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/bootstrap.sh"
cd "$root"
exec .venv/bin/python launch/quickstart.py "$@"
