#!/usr/bin/env bash
# The one GPU check: everything GPU-related ltray measures, in one call of at most 9 minutes,
# results under OUT (argument or $OUT; default ./gpu-check-out): summary.md, and logs.tar.gz with
# a log a part (one file: the device tool brings back only a few files).
#
#   1. the device (nvidia-smi, torch, what is installed);
#   2. the tests that need CUDA (nvjpeg against the CPU decoder, the augmentation on the GPU,
#      the three input paths), where pytest travelled in .whl/;
#   3. bench/bench_pipeline.py --full: ResNet-50 at 224 and ResNet-32 at 32 fed by ltray's
#      pipeline against synthetic batches on the device;
#   4. bench/bench_uniformity.py: the dr uniformity term against a ResNet-50 step, alone and
#      inside the step (what a user pays), fused and not; bench/bench_step.py: what bf16,
#      channels_last, fused SGD and torch.compile each buy, for ce and dr (what dr's loss
#      costs a launch-bound ResNet-32 step, eager and compiled); bench/bench_decode.py: nvjpeg
#      in torchvision against TorchCodec's (its wheel travels in .whl/; skipped where it does
#      not load);
#   5. bench/bench_scaling.py and bench/bench_stream.py: need Ray (skipped without it);
#   6. host synchronisations inside the step loop (LTRAY_SYNC_DEBUG=warn, GPU decode path);
#   7. the reproduction: ce, balanced_softmax, dr and dr with prior_tau on CIFAR-10-LT IF 100,
#      200 epochs, jobs/cifar10_lt.yaml's protocol, the four side by side on the one GPU.
#
# GPU_CHECK_PARTS picks parts (default "tests syncs repro bench"), GPU_CHECK_RUNS the
# reproduction's runs (default "ce balanced_softmax dr dr-prior"). On an H200 the four 200-epoch
# runs side by side take over 8 minutes (dr: 2.3 s an epoch), so a 15-minute device budget runs
# "tests bench" (and "syncs") in one call (GPU_CHECK_SECONDS=540) and "repro" in a second, or
# the other way round (bench/README.md, GPU check, says which the next session needs).
# On the CPU it runs too: GPU_CHECK_QUICK=1 shrinks every part to seconds (tests/test_gpu_check.py
# runs it so), and the parts that need CUDA say so and skip.
# Needs python3 with torch, torchvision, pyarrow, fsspec, typer, rich, pyyaml. What a bare GPU box
# lacks travels in git-ignored folders: .whl/ (pydantic and its dependencies, pytest and its;
# bench/fetch_wheels.sh fetches them) and .device-data/ (the CIFAR-10 archive).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-${OUT:-$PWD/gpu-check-out}}")
LOGS=$OUT/logs
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import pydantic" 2>/dev/null; then
    # TorchCodec on its own: only bench_decode.py wants it, and a wheel this box refuses
    # must not keep pydantic and pytest from installing
    for wheels in "$(ls .whl/*.whl | grep -v /torchcodec-)" "$(ls .whl/torchcodec-*.whl 2>/dev/null)"; do
        [ -n "$wheels" ] || continue
        # shellcheck disable=SC2086 # one wheel path a word
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu-check-site $wheels >> "$LOGS/pip.txt" 2>&1 \
            || echo "pip refused: $wheels" >> "$LOGS/pip.txt"
    done
    export PYTHONPATH=/tmp/gpu-check-site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# `ltray` as a command (not a shell function: `timeout` runs commands), from this checkout
LTRAY=("$PY" -c 'import sys; from ltray.cli import app; sys.argv[0] = "ltray"; app()')
QUICK=${GPU_CHECK_QUICK:-0}
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
SUMMARY=$OUT/summary.md
started=$(date +%s)
PARTS=" ${GPU_CHECK_PARTS:-tests syncs repro bench} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
left() { echo $(( ${GPU_CHECK_SECONDS:-540} - $(elapsed) )); }
elapsed() { echo $(( $(date +%s) - started )); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# run NAME SECONDS CMD...: one part, its log under OUT, its status in the summary
run() {
    local name=$1 limit=$2; shift 2
    local t0; t0=$(date +%s)
    echo "== $name (limit ${limit}s, at $(elapsed)s)"
    timeout "$limit" "$@" > "$LOGS/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$LOGS/$name.txt"
    note "- $name: exit $rc in $(( $(date +%s) - t0 ))s (log $name.txt)"
    return $rc
}

: > "$SUMMARY"
note "# ltray GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
{ nvidia-smi || true
  "$PY" -c "import sys, os, torch, torchvision; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'torchvision', torchvision.__version__, 'cpus', len(os.sched_getaffinity(0)),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} > "$LOGS/device.txt" 2>&1
note "- device: $(tail -n 1 "$LOGS/device.txt")"

archive=.device-data/cifar10-jpeg.tar.gz
[ -f "$archive" ] || archive=../shared/data/cifar10-jpeg.tar.gz
data=/tmp/gpu-check-cifar10-lt-100
# no val split: the protocol trains on the first n_c images of every class (12,406), and airplane
# has no image left over for a val split; the runs select nothing and report test after epoch 200
if [ -f "$archive" ]; then
    run prepare 120 "${LTRAY[@]}" prepare cifar-lt "$archive" "$data" --imbalance 100
else
    note "- prepare: skipped: no CIFAR-10 archive in .device-data/ or ../shared/data/"
    data=
fi

# bench_pipeline.py --full's 400 px JPEGs (30-60 s of one core), made while the untimed parts run
photos=
if part bench && [ "$QUICK" != 1 ]; then
    "$PY" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path
from bench_data import GPU_PHOTOS_PER_CLASS, photo_set
photo_set(Path('/tmp/gpu-check-bench'), GPU_PHOTOS_PER_CLASS)" \
        > "$LOGS/photo-set.txt" 2>&1 &
    photos=$!
fi

if ! part tests; then :
elif [ "$DEVICE" = cpu ]; then
    note "- cuda-tests: skipped: no CUDA device (on the CPU the test suite runs these files)"
elif "$PY" -c "import pytest" 2>/dev/null; then
    run cuda-tests 120 "$PY" -m pytest -q -p no:cacheprovider --noconftest \
        tests/data/test_gpu_decode.py tests/data/test_transforms.py \
        tests/train/test_input_path.py tests/train/test_sync_check.py \
        tests/method/test_uniformity.py -m "not slow"
else
    note "- cuda-tests: skipped: pytest is not installed (bench/fetch_wheels.sh puts it in .whl/)"
fi

common=(--local --set data.url="$data" --set tracking.uri=none --fresh)
quick=(); [ "$QUICK" = 1 ] && quick=(--set schedule.epochs=2 --set schedule.max_steps_per_epoch=3
    --set schedule.max_eval_batches=2 --set schedule.eval_every=1 --set optim.batch_size=16)
syncs_seen() { cat "$@" | grep -c "called a synchronizing CUDA operation"; }

# 6. no host synchronisation inside the step loop: torch warns at each one (once per place)
if part syncs && [ "$DEVICE" = cpu ]; then
    note "- host-syncs: skipped: torch checks them on CUDA only (the suite checks the CPU loop)"
elif part syncs && [ -n "$data" ]; then
    LTRAY_SYNC_DEBUG=warn run host-syncs 90 "${LTRAY[@]}" train jobs/cifar10_lt.yaml \
        "${common[@]}" --set storage.url=/tmp/gpu-check-syncs --set data.on_device=false \
        --set schedule.epochs=1 --set schedule.max_steps_per_epoch=40 \
        --set schedule.max_eval_batches=2 "${quick[@]}"
    note "- host synchronisations reported in the step loop (GPU decode path, from its third" \
        "step): $(syncs_seen "$LOGS/host-syncs.txt")"
fi

# 7. the reproduction, four runs side by side, in what is left (less 100 s for the benchmarks)
if part repro && [ -n "$data" ]; then
    budget=$(( $(left) - $(part bench && echo 100 || echo 10) ))
    note "- reproduction: $budget s left for it"
    default_runs="ce balanced_softmax dr dr-prior"
    [ "$QUICK" = 1 ] && default_runs="ce dr-prior"  # the two kinds of run, for the CPU smoke test
    read -r -a runs <<< "${GPU_CHECK_RUNS:-$default_runs}"
    for name in "${runs[@]}"; do
        sets=(--set loss.name="${name%-prior}")
        [ "$name" = dr-prior ] && sets+=(--set loss.prior_tau=1.0)
        # each run in a storage folder of its own, which repro_row.py reads its epochs from
        rm -rf "/tmp/gpu-check-runs/$name"
        { t0=$(date +%s)
          LTRAY_SYNC_DEBUG=warn timeout "$budget" "${LTRAY[@]}" train jobs/cifar10_lt.yaml \
              "${common[@]}" --set storage.url="/tmp/gpu-check-runs/$name" "${sets[@]}" \
              "${quick[@]}"
          echo "[gpu-check] process wall $(( $(date +%s) - t0 )) s"
        } > "$LOGS/repro-$name.txt" 2>&1 &
    done
    wait
    { echo
      "$PY" bench/repro_row.py --header
      for name in "${runs[@]}"; do
          "$PY" bench/repro_row.py "$name" "$LOGS/repro-$name.txt" "$data" \
              "/tmp/gpu-check-runs/$name"
      done
      echo
      echo "host synchronisations reported in the reproduction's step loops (held on the" \
          "device, from the third step): $(syncs_seen "$LOGS"/repro-*.txt)"
      echo "at $(elapsed)s"
    } | tee -a "$SUMMARY"
fi

# 3-5. the benchmarks, in what is left of the 9 minutes: the uniformity term first (short)
if part bench && [ "$QUICK" = 1 ]; then
    run pipeline 240 "$PY" bench/bench_pipeline.py --device "$DEVICE" --steps 4 --workers 1 \
        --cache /tmp/gpu-check-bench ${data:+--data "$data"}
    run uniformity 120 "$PY" bench/bench_uniformity.py --device "$DEVICE" --classes 256 \
        --batch 2 --image-size 64 --repeats 1 --profile
    # batch 8: a CPU without bf16 instructions runs the bf16 variants ~12x slower than fp32
    run step 180 "$PY" bench/bench_step.py --device "$DEVICE" --steps 2 --models resnet32 \
        --batch 8
    run decode 60 "$PY" bench/bench_decode.py --device "$DEVICE" --images 64 ${data:+--data "$data"}
elif part bench; then
    run uniformity 90 "$PY" bench/bench_uniformity.py --device "$DEVICE" --classes 1000 8142 \
        --profile
    if [ -n "$photos" ]; then wait "$photos"; note "- photo set: exit $? (log photo-set.txt)"; fi
    run pipeline $(( $(left) > 200 ? 150 : $(left) - 30 )) "$PY" bench/bench_pipeline.py \
        --device "$DEVICE" --full --cache /tmp/gpu-check-bench ${data:+--data "$data"}
    # nvjpeg in torchvision against TorchCodec's: issue 11 keeps whichever is faster
    [ "$(left)" -gt 30 ] && run decode "$(( $(left) > 70 ? 60 : $(left) - 10 ))" "$PY" \
        bench/bench_decode.py --device "$DEVICE" --cache /tmp/gpu-check-bench
    # ResNet-32 with torch.compile of the model and its loss (about 30 s a loss): what dr's
    # extra small ops cost on a launch-bound step, eager and compiled; then ResNet-50
    [ "$(left)" -gt 60 ] && run step "$(( $(left) > 160 ? 150 : $(left) - 10 ))" "$PY" \
        bench/bench_step.py --device "$DEVICE" --models resnet32 --compile
    [ "$(left)" -gt 40 ] && run step-resnet50 "$(( $(left) > 100 ? 90 : $(left) - 10 ))" "$PY" \
        bench/bench_step.py --device "$DEVICE" --models resnet50
    if [ "$DEVICE" = cuda ]; then  # the default's alternatives, at 8,142 classes
        [ "$(left)" -gt 20 ] && run uniformity-fp32 "$(( $(left) - 10 ))" "$PY" \
            bench/bench_uniformity.py --device cuda --classes 8142 --gram fp32
        [ "$(left)" -gt 10 ] && run uniformity-unfused "$(left)" "$PY" \
            bench/bench_uniformity.py --device cuda --classes 8142 --fused off
    fi
fi
for bench in scaling stream; do
    if ! part bench; then :
    elif [ "$QUICK" = 1 ]; then
        note "- $bench: skipped in quick mode (tests/test_bench_scripts.py runs it)"
    elif "$PY" -c "import ray" 2>/dev/null; then
        gpu=(); [ "$DEVICE" = cuda ] && [ "$bench" = scaling ] && gpu=(--use-gpu)
        run "$bench" 120 "$PY" "bench/bench_$bench.py" "${gpu[@]}"
    else
        note "- $bench: skipped: ray is not installed here"
    fi
done

tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -r "$LOGS"
echo "results in $OUT: summary.md, logs.tar.gz"
