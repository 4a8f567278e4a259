#!/usr/bin/env bash
# One prepared script for a CUDA machine: GPU benchmarks + the shipped model, inside a time budget.
#
#   bash bench/gpu.sh                 # on the GPU machine, from the repo root; results in $OUT
#   QUICK=1 bash bench/gpu.sh         # smoke check of the script itself on a CPU (tiny sizes)
#
# Steps (each logs to $OUT/log.txt; a failed step does not stop the others):
#   1. carried wheels (.whl/) installed if present; versions and the GPU printed; the PP-OCRv4 text
#      detector (text_unet's encoder init) found or the script stops (bench/gpu_kit.py prepares both)
#   2. `wm prepare` of the full profile in the background (CPU workers) while
#   3. bench/gpu.py measures the CUDA switches (AMP fp16/bf16, channels_last, pinned copies,
#      batch sweep, adaptive batch under a memory cap, a real CUDA OOM survived) -> gpu.json
#   4. `wm train` of the shipped recipe (params-full + params-gpu + bench/ship-gpu.yaml) for the
#      minutes left before the deadline, `wm evaluate`, `wm export-weights` -> wmdetect.pt/.json
#   5. the training data path alone with PIL and torch resizes (bench/loader.py on the mmap cache the
#      training run built; its table goes into log.txt)
#   6. the training run's own model step at each crop stage (bench/gpu.py recipe), then the loop against
#      it stage by stage (bench/loop_efficiency.py, into log.txt), then torch.compile's training
#      benchmark with whatever time is left -> gpu_late.json (markdown tables go into log.txt: at most
#      8 files come back from a device run)
# The whole script ends before DEADLINE_S seconds (default 540).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-bench/results/gpu-run}
DEADLINE_S=${DEADLINE_S:-540}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export TQDM_MININTERVAL=10
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu.sh +$(elapsed)s] $*" | tee -a "$LOG"; }
# train.max_minutes for SECONDS left: half a minute kept for start-up and the last validation, at least 0.5
train_minutes() { awk -v s="$1" 'BEGIN { m = s / 60 - 0.5; if (m < 0.5) m = 0.5; printf "%.2f", m }'; }

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, torch
mods = ["numpy", "PIL", "pydantic", "yaml", "psutil", "tqdm", "filelock", "scipy", "skimage", "matplotlib"]
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print({m: getattr(importlib.import_module(m), "__version__", "?") for m in mods})
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { say "imports failed: stopping"; exit 3; }
# The recipe starts text_unet's encoder from PP-OCRv4's text detector, which the device cannot download:
# bench/gpu_kit.py puts it (and the missing wheels) where this finds it, to be carried.
$PY - <<'EOF' || { say "no PP-OCRv4 text detector: run bench/gpu_kit.py and carry .cache/wmdetect/text_detector"; exit 3; }
import importlib.util, sys
from pathlib import Path
from wmcore.model.ocr_import import TEXT_DETECTOR
name = Path(TEXT_DETECTOR["member"]).name
spec = importlib.util.find_spec("rapidocr_onnxruntime")
found = [p for p in [Path(".cache/wmdetect/text_detector") / name,
                     Path(spec.origin).parent / "models" / name if spec and spec.origin else None] if p and p.is_file()]
sys.exit(0 if found else 1)
EOF

CFG=(--params params.yaml --params-extra params-full.yaml --params-extra params-gpu.yaml --params-extra bench/ship-gpu.yaml)
# QUICK writes its own folders: its tiny data must never stand in for the full profile's evaluation splits
SUFFIX=$([ "$QUICK" = 1 ] && echo quick || echo full)
PREPARED=data/prepared-$SUFFIX TRAIN_DIR=results/train-$SUFFIX EVAL_DIR=results/evaluate-$SUFFIX
SET=(-S paths.prepared=$PREPARED -S paths.train_dir=$TRAIN_DIR -S paths.evaluate_dir=$EVAL_DIR)
if [ "$QUICK" = 1 ]; then  # tiny everything: checks the script's wiring, not the numbers
  SET+=(-S base.device=auto -S base.precision=fp32 -S train.amp=false -S prepare.n_train=12 -S prepare.n_val=4
        -S prepare.n_test=4 -S prepare.n_test_heldout=4 -S prepare.max_side=384 -S loader.workers=0
        -S loader.pin_memory=false -S loader.persistent_workers=false -S model.base_width=8 -S train.val_subset=4
        -S "train.progressive=[{until_epoch: 2, crop: 64, batch_size: 4}, {until_epoch: 201, crop: 96, batch_size: 2}]")
  BENCH=(--quick --no-compile)
  PREP_WORKERS=2
  EVAL_S=600  # real_val's 139 photos on a CPU
else
  BENCH=()
  EVAL_S=120
  PREP_WORKERS=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))
fi
WM=($PY -m wmcore.cli "${CFG[@]}" "${SET[@]}")

say "prepare (full profile, $PREP_WORKERS workers) in the background"
( "${WM[@]}" -S prepare.workers=$PREP_WORKERS prepare > "$OUT/prepare.txt" 2>&1; echo "prepare exit $?" >> "$OUT/prepare.txt" ) &
PREP_PID=$!

say "GPU benchmarks"
timeout $(( DEADLINE_S / 3 )) $PY bench/gpu.py --out "$OUT/gpu.json" --no-compile "${BENCH[@]}" \
  --sections train infer adaptive oom >> "$LOG" 2>&1 || say "bench/gpu.py ended with $?"
cat "$OUT/gpu.md" >> "$LOG" && rm -f "$OUT/gpu.md"  # at most 8 files come back: gpu.py --report remakes it

wait $PREP_PID
tail -4 "$OUT/prepare.txt" | tee -a "$LOG"
cat "$OUT/prepare.txt" >> "$LOG" && rm -f "$OUT/prepare.txt"  # at most 8 files come back from $OUT

# Training gets the time left minus evaluation/export (~70 s), the loader benchmark (~45 s), the model
# step of each crop stage (~30 s) and the compile benchmark (~60 s).
LEFT=$(( DEADLINE_S - $(elapsed) - 205 ))
[ "$QUICK" = 1 ] && LEFT=30
MINUTES=$(train_minutes "$LEFT")
say "train for $MINUTES min"
TRAIN_CMD="${WM[*]} -S train.max_minutes=$MINUTES train"
timeout $(( LEFT + 60 )) "${WM[@]}" -S train.max_minutes="$MINUTES" train >> "$LOG" 2>&1 || say "train ended with $?"
if [ ! -f "$TRAIN_DIR/best.pt" ]; then  # a CUDA path never run before failed: once more, plainer
  LEFT=$(( DEADLINE_S - $(elapsed) - 90 ))
  MINUTES=$(train_minutes "$LEFT")
  say "no checkpoint: training again without pinned memory, persistent workers and AMP for $MINUTES min"
  TRAIN_CMD="${WM[*]} -S loader.pin_memory=false -S loader.persistent_workers=false -S train.amp=false"
  TRAIN_CMD="$TRAIN_CMD -S train.max_minutes=$MINUTES train"
  timeout $(( LEFT + 30 )) $TRAIN_CMD >> "$LOG" 2>&1 || say "train ended with $?"
fi
cp "$TRAIN_DIR/train_summary.json" "$TRAIN_DIR/history.json" "$OUT/" 2>/dev/null

say "evaluate"
timeout $EVAL_S "${WM[@]}" evaluate >> "$LOG" 2>&1 || say "evaluate ended with $?"
cp "$EVAL_DIR/metrics.json" "$OUT/" 2>/dev/null
"${WM[@]}" export-weights --out "$OUT/wmdetect.pt" --command-line "$TRAIN_CMD" >> "$LOG" 2>&1 \
  || say "export ended with $?"

say "training data path alone (uint8 batches): PIL vs torch resize of the multiscale views"
if [ "$QUICK" = 1 ]; then LOADER=(--crops 64 --batches 4 --workers 0 --passes 2 --repeats 1)
else LOADER=(--crops 384 --batches 32 --workers 12 --pin --passes 2 --repeats 1); fi
timeout 60 $PY bench/loader.py --prepared "$PREPARED" --cache-dir .cache/wmdetect "${LOADER[@]}" \
  --compare resize --uint8 --out /tmp/loader >> "$LOG" 2>&1 || say "loader benchmark ended with $?"

# The training run's own model step at each crop stage, on a quiet CPU (prepare ran beside the first
# benchmarks), then torch.compile's training step with whatever time is left: one file, gpu_late.json.
RECIPE=(params-full.yaml params-gpu.yaml bench/ship-gpu.yaml)  # the training run's files,
RECIPE_SET=()                                                    # and its model / precision / stage overrides
for ((i = 0; i < ${#SET[@]}; i += 2)); do
  case "${SET[i+1]}" in base.*|train.*|model.*) RECIPE_SET+=("${SET[i+1]}");; esac
done
LATE=(recipe)
WHAT="the training run's model step per crop stage"
LEFT=$(( DEADLINE_S - $(elapsed) - 5 ))
if [ "$LEFT" -gt 90 ] && [ "$QUICK" != 1 ]; then LATE+=(train); WHAT="$WHAT, then the torch.compile training step"; fi
say "$WHAT ($LEFT s left)"
timeout "$LEFT" $PY bench/gpu.py --out "$OUT/gpu_late.json" "${BENCH[@]}" --sections "${LATE[@]}" \
  --recipe "${RECIPE[@]}" --set "${RECIPE_SET[@]}" --train-variants amp_bf16_cl amp_bf16_cl_compile >> "$LOG" 2>&1 \
  || say "late benchmarks ended with $?"
cat "$OUT/gpu_late.md" >> "$LOG" 2>/dev/null; rm -f "$OUT/gpu_late.md"

say "the training loop against its model step, stage by stage (#14: at least 0.9)"
$PY bench/loop_efficiency.py --history "$TRAIN_DIR/history.json" --gpu "$OUT/gpu_late.json" \
  --loader /tmp/loader/loader.json >> "$LOG" 2>&1 || say "loop efficiency ended with $?"
say "done"
ls -la "$OUT" | tee -a "$LOG"
