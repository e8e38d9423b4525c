#!/usr/bin/env bash
# build.py end to end on a borrowed H100/H200 (no network there), with its defaults: a synthetic
# corpus of WikiText-2's size and layout, and Qwen3-Embedding-4B's architecture with random float16
# weights saved as a local model directory; then `--verify`, which re-embeds a sample.
# Last, the embed stage again with --compile no, for the compiler's gain in the same run.
# Usage (repo root): bash benchmarks/gpu_build.sh [OUTDIR]; needs the wheels of gpu_run.sh in .whl/.
set -euo pipefail
out=${1:-${OUT:-/tmp}}
work=/tmp/elm-gpu-build
log="$out/gpu_build.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, datasets, pyarrow; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
SECONDS=0
python3 - "$work/model" <<'EOF'
import sys, torch
from transformers import Qwen3Model
from benchmarks.embed_speed import qwen3_4b_config
from elm_wikitext.tiny import build_qwen_tokenizer
torch.manual_seed(0)
with torch.device("cuda"):
    Qwen3Model(qwen3_4b_config()).half().save_pretrained(sys.argv[1])
build_qwen_tokenizer().save_pretrained(sys.argv[1])
EOF
python3 benchmarks/synthetic_wikitext.py "$work/corpus" --scale 1
echo "model and corpus written in $SECONDS s"
SECONDS=0
python3 build.py --source "$work/corpus" --model "$work/model" --output "$work/out"
echo "build.py (text and embed stages, defaults) took $SECONDS s"
python3 -c "import json; print(json.dumps(json.load(open('$work/out/manifest.json'))['stats'], indent=1))"
SECONDS=0
python3 build.py --verify "$work/out"
echo "--verify took $SECONDS s"
python3 build.py --stage embed --compile no --model "$work/model" --output "$work/out"
} 2>&1 | grep -v Warning | tee "$log"
