#!/usr/bin/env bash
# The GPU benchmarks (issue #20, item 13), runnable on a bare GPU machine from a clean checkout
# (docs/benchmarks.md, "Running the GPU benchmarks").
#
#   bash bench/gpu.sh wheels     here, once, with the package registry in reach: the wheels the GPU
#                                image lacks (Python 3.12, x86-64) into .whl/ (git-ignored, ~14 MB)
#   bash bench/gpu.sh all        on the GPU machine (device tool: carry [".whl"]): every part below, each
#                                under its own timeout (PART_S, 480 s), all within TOTAL_S (540 s from the
#                                script's start); JSON reports in $OUT
#   bash bench/gpu.sh PART       one part: cache | distill | e2e | step-compile | step-lgrnet
#
# Parts: cache (ViT-B/16 images/s and queries/s, ours vs plain open_clip at the same precision),
# distill (train step with cached distillation vs none; target <= 1% overhead), e2e (R50 student, 640 px,
# batch 64, fed from JPEGs by the real loader: images/s, target >= 700, and the data-wait fraction,
# target < 5%). Everything is made in code: JPEGs, queries, random teacher and a random BERT-base.
# Rehearse here: DEVICE=cpu SMALL=1 SKIP_INSTALL=1 PYTHON=.venv/bin/python bash bench/gpu.sh all
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the packages pipeline/ and storage/ import that the GPU image (Python 3.12) lacks, with their
# own missing needs; the image already holds torch, torchvision, transformers, timm, h5py, tensorboard,
# typer, pillow, numpy, regex, huggingface_hub, pyyaml, toolz, cloudpickle, fsspec, msgpack and psutil.
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 zarr==3.1.6 numcodecs==0.16.3 donfig==0.8.1.post1
        google-crc32c==1.7.1 dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.1.0
        tornado==6.5.2 zict==3.0.0)
PARTS="cache distill e2e"

die() { echo "bench/gpu.sh: $*" >&2; exit 2; }

wheels() {
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    du -sh .whl
}

install() {
    # SKIP_INSTALL=1: the packages are already importable (a rehearsal in the project's virtualenv).
    [ -n "${SKIP_INSTALL:-}" ] && return 0
    local wheels=${WHEEL_DIR:-.whl}
    compgen -G "$wheels/*.whl" > /dev/null ||
        die "no wheels in $wheels/: run 'bash bench/gpu.sh wheels' where the registry is reachable, then carry .whl"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
}

part() {  # part NAME LIMIT_S: run one part under `timeout`, its JSON to $OUT/NAME.json, stderr to the log
    local name=$1 limit=$2 common=(--device "$DEVICE" --teacher "$TEACHER")
    local step=(--student "$STUDENT" --text-encoder "$WORK/bert" --image-size "$IMAGE_SIZE"
                --batch-size "$BATCH_SIZE" --jpeg-size "$JPEG_SIZE" --workers "$WORKERS" "${common[@]}")
    local cmd
    case "$name" in
        cache) cmd=(bench.cache_bench "${common[@]}" --images "$IMAGES" --texts "$TEXTS" --jpeg-size "$JPEG_SIZE"
                    --batch-size "$CACHE_BATCH" --decode-workers "$WORKERS" --repeats "$REPEATS"
                    --workdir "$WORK/cache") ;;
        distill) cmd=(bench.step_bench "${step[@]}" --modes none,cached,cached-views --steps "$STEPS"
                      --rounds "$ROUNDS" --workdir "$WORK/distill") ;;
        e2e) cmd=(bench.step_bench "${step[@]}" --modes cached --steps "$STEPS" --rounds 1
                  --loader-batches "$LOADER_BATCHES" --textured --workdir "$WORK/e2e") ;;
        step-compile) cmd=(bench.step_bench "${step[@]}" --modes none,cached --steps "$STEPS" --rounds "$ROUNDS"
                           --compile --workdir "$WORK/compile") ;;
        step-lgrnet) cmd=(bench.step_bench "${step[@]}" --student "${LGRNET_STUDENT}" --modes none,cached
                          --steps "$STEPS" --rounds "$ROUNDS" --workdir "$WORK/lgrnet") ;;
        *) die "unknown part '$name': all, $PARTS, step-compile or step-lgrnet" ;;
    esac
    echo "== $name (at most ${limit} s): python -m ${cmd[*]}" | tee -a "$OUT/gpu.log"
    local started=$SECONDS rc=0
    timeout -k 10 "$limit" "$PYTHON" -m "${cmd[@]}" > "$OUT/$name.json" 2>> "$OUT/gpu.log" || rc=$?
    cat "$OUT/$name.json"
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && echo "== $name: stopped at its ${limit} s limit" | tee -a "$OUT/gpu.log"
        echo "== $name FAILED (exit $rc) after $((SECONDS - started)) s; the log's end:" >&2
        tail -n 20 "$OUT/gpu.log" >&2
        return "$rc"
    fi
    echo "== $name done in $((SECONDS - started)) s" | tee -a "$OUT/gpu.log"
}

main() {
    local what=${1:?"usage: bash bench/gpu.sh wheels | all | $PARTS | step-compile | step-lgrnet"}
    if [ "$what" = run ]; then what=${2:?"run what: all, $PARTS, step-compile or step-lgrnet"}; fi  # the old form
    if [ "$what" = wheels ]; then wheels; return; fi
    case " all $PARTS step-compile step-lgrnet " in
        *" $what "*) ;;
        *) die "unknown part '$what': all, $PARTS, step-compile or step-lgrnet" ;;
    esac
    PYTHON=${PYTHON:-python3} DEVICE=${DEVICE:-cuda} OUT=${OUT:-bench-out}
    mkdir -p "$OUT" && : > "$OUT/gpu.log"
    OUT=$(cd "$OUT" && pwd) WORK=$(mktemp -d "${TMPDIR:-/tmp}/epmvg-gpubench.XXXXXX")
    export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if [ -n "${SMALL:-}" ]; then  # the CPU rehearsal: the same commands at sizes that run in seconds
        : "${TEACHER:=pipeline/configs/teacher/clip-tiny.json}" "${STUDENT:=tiny}" "${LGRNET_STUDENT:=lgrnet-tiny}"
        : "${IMAGE_SIZE:=64}" "${BATCH_SIZE:=4}" "${JPEG_SIZE:=96}" "${IMAGES:=8}" "${TEXTS:=64}" "${CACHE_BATCH:=4}"
        : "${WORKERS:=1}" "${STEPS:=1}" "${ROUNDS:=1}" "${REPEATS:=1}" "${LOADER_BATCHES:=2}" "${PART_S:=120}"
    fi
    # Sizes for one H100/H200: each part well inside its 8-minute limit, all three inside TOTAL_S.
    : "${TEACHER:=ViT-B-16}" "${STUDENT:=transvg-r50-random}" "${LGRNET_STUDENT:=lgrnet-r50}"
    : "${IMAGE_SIZE:=640}" "${BATCH_SIZE:=64}" "${JPEG_SIZE:=640}" "${IMAGES:=2048}" "${TEXTS:=100000}"
    : "${CACHE_BATCH:=512}" "${WORKERS:=14}" "${STEPS:=20}" "${ROUNDS:=5}" "${REPEATS:=2}" "${LOADER_BATCHES:=60}"
    : "${PART_S:=480}" "${TOTAL_S:=540}"
    install
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2> /dev/null || echo "no nvidia-smi"
      # The peak MFU will use, and a random BERT-base (config + made-up vocabulary) for the student's
      # text encoder: no download.
      "$PYTHON" -m bench.assets setup "$WORK/bert"; } | tee "$OUT/device.txt"
    local deadline=$TOTAL_S failed=() name limit  # SECONDS counts from the start: install and setup included
    for name in $([ "$what" = all ] && echo "$PARTS" || echo "$what"); do
        limit=$((deadline - SECONDS < PART_S ? deadline - SECONDS : PART_S))
        if [ "$limit" -lt 20 ]; then
            echo "== $name skipped: the ${TOTAL_S} s total is spent" | tee -a "$OUT/gpu.log"; failed+=("$name")
            continue
        fi
        part "$name" "$limit" || failed+=("$name")
    done
    rm -rf "$WORK"
    [ ${#failed[@]} -eq 0 ] || die "failed or skipped: ${failed[*]} (see $OUT/gpu.log)"
    echo "all done: reports in $OUT"
}

main "$@"
