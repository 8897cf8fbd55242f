#!/usr/bin/env bash
# The test suite (real data from ../shared/data). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
exec python -m pytest "$@"
