#!/usr/bin/env bash
# Everything the GPU machine checks, in one go, from the repository root with .gpu/ (wheels + tok) carried:
# the missing wheels into /tmp/site, then tests/gpu, then benchmarks/gpu_bench.py. Logs and results go to $OUT.
#
#   OUT=/some/folder bash benchmarks/gpu_run.sh
# GPU_BENCH_ARGS passes options to gpu_bench (e.g. "--only session,segment,token,batch" to skip compiling).
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
{
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl 2>&1 | tail -3
} 2>&1 | tee "$OUT/setup.log"
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export ENSEMBLEHUB_GPU_TOK=$PWD/.gpu/tok ENSEMBLEHUB_CACHE=/tmp/ensemblehub_cache
python3 -c 'import torch, transformers, ensemblehub_core; print(torch.__version__, transformers.__version__, torch.cuda.is_available(), ensemblehub_core.__file__)' 2>&1 | tee -a "$OUT/setup.log"

timeout 180 python3 -m pytest -q -p no:cacheprovider tests/gpu -rs --junitxml="$OUT/tests_gpu.xml" 2>&1 | tee "$OUT/tests_gpu.log"
tests_rc=${PIPESTATUS[0]}
timeout 400 python3 -m benchmarks.gpu_bench --out "$OUT" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc bench rc=$bench_rc" | tee -a "$OUT/setup.log"
exit $(( tests_rc != 0 || bench_rc != 0 ))
