#!/usr/bin/env bash
# The test suite (real data from ../shared/data). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
# Passive OpenMP waiting: the suite starts subprocesses (kill/resume, torchrun) beside itself.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python -m pytest "$@"
