#!/usr/bin/env bash
# The main job: experts -> STM distillation -> evaluation + baselines -> report, on the
# embedded digits. A few minutes on a laptop CPU. Extra arguments go to `trajdistill demo`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
exec trajdistill demo "$@"
