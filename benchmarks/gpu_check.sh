#!/usr/bin/env bash
# The fused training path on one GPU, in one command, offline (issue 15):
#   1. fused == logits on CUDA in fp32, bf16 weights and bf16 autocast  (benchmarks/fused_check.py)
#   2. the train_step table on CUDA: a random Qwen2.5-0.5B-shaped model (494M parameters), V = 151,936,
#      2 x 2048 tokens, bf16 mixed precision, 2 warm-up + 5 measured steps   (benchmarks/train_step.py)
# Target: under 8 minutes. Results (logs, JSON) go to $OUT, else benchmarks/gpu_results/.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # on a NETWORKED machine, before: fills benchmarks/wheels/
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (no network needed)
#   bash benchmarks/gpu_check.sh --dry-run        # CPU, tiny sizes: checks the script itself (~8 min here)
#
# The GPU machine may have torch, transformers, accelerate and peft but lack pydantic, datasets or TRL.
# Whatever of those is missing is installed from benchmarks/wheels/ with `pip --no-index` (pip resolves
# only against what is installed and the wheels there, so it can never fetch or replace torch). The
# wheels (python 3.12, manylinux x86_64, ~55 MB) are not in git (benchmarks/wheels/.gitignore):
# `--fetch-wheels` downloads them, pinned to the versions tested with the harness; copy the folder along.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=benchmarks/wheels
RESULTS=${OUT:-benchmarks/gpu_results}
# Pure-Python and cp312 wheels of what a bare GPU machine may lack (the harness's tested versions).
PINNED=(
  trl==1.16.0 datasets==5.2.0 pyarrow==26.0.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
  fsspec==2026.9.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing_extensions==4.16.0
)

case "${1:-}" in
  --fetch-wheels)
    mkdir -p "$WHEELS"
    "$PY" -m pip download --dest "$WHEELS" --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 "${PINNED[@]}"
    du -sh "$WHEELS"
    exit 0 ;;
  --dry-run) DRY=1 ;;
  "") DRY=0 ;;
  *) echo "usage: $0 [--fetch-wheels | --dry-run]" >&2; exit 2 ;;
esac

mkdir -p "$RESULTS"
start=$SECONDS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 1. What is missing, from the wheels brought along (never from the network).
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"pydantic": "pydantic", "datasets": "datasets", "trl": "trl", "yaml": "pyyaml"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ "$DRY" = 1 ]; then
    echo "dry run: would install from $WHEELS: $missing" >&2
  elif ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: missing $missing and no wheels in $WHEELS; run 'bash $0 --fetch-wheels' on a networked machine and copy $WHEELS along" >&2
    exit 2
  else
    echo "installing from $WHEELS: $missing" >&2
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $missing 2>&1 | tee "$RESULTS/pip.log"
  fi
fi
"$PY" - <<'EOF' | tee "$RESULTS/versions.txt"
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "transformers", "accelerate", "peft", "pydantic", "datasets", "trl"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", type(e).__name__)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

# 2. fused == logits on the device.
status=0
if [ "$DRY" = 1 ]; then
  check=(--device cpu --tiny --families llama gemma2)
  step=(--device cpu --tiny --seq 64 --warmup 1 --steps 1 --threads 2 --only "trl nll" "ours otr K=256 fused" "ours otr K=256 logits")
else
  check=(--device cuda)
  step=(--device cuda --model qwen0.5b --bf16 --seq 2048 --warmup 2 --steps 5)
fi
timeout 240 "$PY" benchmarks/fused_check.py "${check[@]}" 2>&1 | tee "$RESULTS/fused_check.txt" || status=1
echo "fused_check: $((SECONDS - start)) s" >&2

# 3. The train_step table on the device (each variant its own process).
timeout 330 "$PY" benchmarks/train_step.py "${step[@]}" --json "$RESULTS/train_step.json" \
  2>"$RESULTS/train_step.log" | tee "$RESULTS/train_step.md" || status=1
echo "total: $((SECONDS - start)) s; results in $RESULTS (exit $status)" >&2
exit $status
