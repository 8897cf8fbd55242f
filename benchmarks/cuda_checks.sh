#!/usr/bin/env bash
# The GPU checks (issue 13) on a machine with CUDA, in two stages that each fit in a few
# minutes:
#   bash benchmarks/cuda_checks.sh tests   # test_cuda.py (prints TF32's drift), then the whole
#                                          # suite with TRAJDISTILL_TEST_DEVICE=cuda
#   bash benchmarks/cuda_checks.sh graphs  # test_cuda.py, then the CUDA-graph walk's speed (A, C)
#   bash benchmarks/cuda_checks.sh bench   # step_benchmark.py --device cuda (A, C, B40, B80;
#                                          # unroll, lean, stm, graphed; the hybrid with 40 GB at A, C,
#                                          # B80; stm_compiled at A and C; the CPU's chunk of 25
#                                          # at A), eval_benchmark.py, the trajectory load
#   bash benchmarks/cuda_checks.sh bf16    # --autocast bf16: its drift from float64 beside fp32's
#                                          # and TF32's (A, C), then its speed graphed (A, C)
# Logs and JSON lines go to $OUT (default ./cuda-out). The tests read ../shared/data; where it
# is missing, DATA=DIR links DIR there. Runs the checkout's own code (PYTHONPATH=src) with
# whatever torch the machine has; pytest-xdist spreads the suite over WORKERS processes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-cuda-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if [ -n "${DATA:-}" ] && [ ! -e ../shared/data ]; then
    mkdir -p ../shared && ln -s "$(realpath "$DATA")" ../shared/data
fi

case "${1:-}" in
tests)
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    } | tee "$OUT/gpu.txt"
    TRAJDISTILL_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -s -p no:cacheprovider \
        tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -6
    # -v names each result as it comes, and SIGINT lets pytest print its summary: a run cut by
    # the time limit still says which tests failed
    TRAJDISTILL_TEST_DEVICE=cuda OMP_NUM_THREADS=1 timeout -s INT "${SUITE_S:-540}" python3 -m pytest \
        -v --tb=short -p no:cacheprovider -n "${WORKERS:-14}" -rfE tests 2>&1 \
        | tee "$OUT/tests_cuda.log" | grep -E "FAILED|ERROR|passed|failed" | tail -30
    ;;
graphs)
    # the CUDA-graph walk (--cuda_graphs, the default on CUDA): its tests, then its speed against
    # the eager walk and the plain unroll
    TRAJDISTILL_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -s -p no:cacheprovider \
        tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -8
    step() { timeout "$1" python3 benchmarks/step_benchmark.py --device cuda --threads 4 \
                 --out "$OUT/step_cuda.jsonl" "${@:2}" | tail -3; }
    step 240 --configs C,A --modes unroll,lean,stm,lean_graphed,stm_graphed --repeats 5
    ;;
bench)
    step() { timeout "$1" python3 benchmarks/step_benchmark.py --device cuda --threads 4 \
                 --out "$OUT/step_cuda.jsonl" "${@:2}" | tail -3; }
    step 300 --configs A,C,B40,B80 --modes unroll,lean,stm,lean_graphed,stm_graphed --repeats 5
    step 90 --configs A --modes lean --chunk 25 --repeats 5
    step 150 --configs A,C,B80 --modes lean_hybrid,stm_hybrid --repeats 5 --gradient-memory 40
    step 200 --configs A,C --modes stm_compiled --repeats 5
    timeout 90 python3 benchmarks/eval_benchmark.py --device cuda --repeats 2 \
        > "$OUT/eval_cuda.jsonl"; cat "$OUT/eval_cuda.jsonl"
    timeout 60 python3 benchmarks/trajectory_load_benchmark.py --device cuda --drop-caches \
        | tee "$OUT/trajectory_load_cuda.jsonl"
    ;;
bf16)
    TRAJDISTILL_TEST_DEVICE=cuda timeout 90 python3 -m pytest -q -s -p no:cacheprovider \
        tests/test_cuda.py -k bf16 2>&1 | tee "$OUT/test_cuda_bf16.log" | tail -4
    timeout 150 python3 benchmarks/precision_drift.py --device cuda --precisions fp32,tf32,bf16 \
        --out "$OUT/drift_cuda.jsonl"
    timeout 240 python3 benchmarks/step_benchmark.py --device cuda --threads 4 --repeats 5 \
        --configs C,A --modes unroll,stm_graphed,stm_graphed_bf16,lean_graphed,lean_graphed_bf16 \
        --out "$OUT/step_cuda_bf16.jsonl" | tail -3
    ;;
*)
    echo "usage: bash benchmarks/cuda_checks.sh tests|graphs|bench|bf16" >&2
    exit 2
    ;;
esac
