#!/usr/bin/env bash
# The test suite (real data from ../shared/data). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
# Passive OpenMP waiting: the suite starts subprocesses (kill/resume, torchrun) beside itself.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The test files are shared out over one worker per core (pytest-xdist; a file's tests stay
# on one worker, so its module fixtures are built once); `./test.sh -n 0` runs in one process.
exec python -m pytest -n "${TRAJDISTILL_TEST_WORKERS:-auto}" --dist loadfile "$@"
