#!/usr/bin/env bash
# The one GPU check: everything GPU-related ltray can measure today, in one call, results under
# $OUT (default ./gpu-check-out). Runs on the CPU too (slowly; GPU_CHECK_QUICK=1 shrinks it).
#
#   1. the device (nvidia-smi, torch);
#   2. bench/bench_uniformity.py: the dr loss's uniformity term against a ResNet-50 step, with
#      the default fp32 Gram, the opt-in bf16 Gram, and without the compiled block pass;
#   3. `ltray train --local` on CIFAR-10-LT (IF 100, val 50/class) for ce and dr: images per
#      second of ResNet-32 with bf16 autocast and channels_last, fed by ltray's reader.
#
# Needs torch, torchvision, pyarrow, fsspec, typer, rich, pyyaml; pydantic and its three
# dependencies travel as wheels in .whl/ (git-ignored), the archive in .device-data/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH=/tmp/gpu-check-site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ltray() { "$PY" -c 'import sys; from ltray.cli import app; sys.argv[0] = "ltray"; app()' "$@"; }
QUICK=${GPU_CHECK_QUICK:-0}
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

{ nvidia-smi || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

echo "== uniformity term ($DEVICE)"
classes="1000 8142"; [ "$QUICK" = 1 ] && classes="256"
for extra in "" "--gram bf16" "--fused off"; do
    [ "$DEVICE" = cpu ] && [ "$extra" != "" ] && continue
    # shellcheck disable=SC2086
    "$PY" bench/bench_uniformity.py --device "$DEVICE" --classes $classes $extra \
        $([ "$QUICK" = 1 ] && echo "--batch 2 --image-size 64 --repeats 1") 2>&1 \
        | tee -a "$OUT/uniformity.txt"
done

echo "== training, CIFAR-10-LT ($DEVICE)"
archive=.device-data/cifar10-jpeg.tar.gz
[ -f "$archive" ] || archive=../shared/data/cifar10-jpeg.tar.gz
data=/tmp/gpu-check-cifar10-lt
ltray prepare cifar-lt "$archive" "$data" --imbalance 100 --val-per-class 50 2>&1 | tail -3
epochs=5; steps=(); [ "$QUICK" = 1 ] && epochs=1 && steps=(--set schedule.max_steps_per_epoch=3 --set schedule.max_eval_batches=2)
for loss in ce dr; do
    ltray train jobs/cifar10_lt.yaml --local --set data.url="$data" --set loss.name=$loss \
        --set schedule.epochs=$epochs --set schedule.eval_every=1 --set tracking.uri=none \
        --set storage.url=/tmp/gpu-check-runs --set data.loader_workers=8 --fresh "${steps[@]}" \
        2>&1 | tee -a "$OUT/train-$loss.txt"
done
echo "results in $OUT"
