#!/usr/bin/env bash
# The GPU figures (bench/results/*-gpu-*.json, *-h100-*.json ...), on the device machine, with THIS checkout's code:
#   here:   bash bench/gpu-stage.sh   (after committing: packs MLX-CUDA, mlx-vlm, the daemon's wheels, the model builder)
#   there:  see bench/gpu-stage.sh for the two staging calls; then GPU=h100 bash bench/gpu.sh STEPS
# Steps: small (64 and 256 pages, small mode), modes (gundam, base), q8 (the model quantized to 8 bits),
# ctx (which processes hold GPU memory while the daemon runs); pipe-small, pipe-gundam, pipe-q8 (bench/pipelined.py:
# the pipelined bare loop against the daemon, 256 pages, interleaved pairs; pipe-gundam also runs the daemon at 64 fixed
# beside `auto`; pairs-gundam: the bare loop, the daemon and the daemon warmed by one page read first (--compare-warm), no fixed row; pipe-q8 also runs the bare loop with the 8-bit model kept quantized, which on CUDA the engine runs dense) and realistic (the default
# config: gundam, 8-bit, guard on, a mixed drop of PNGs and multi-page PDFs). Pages are 1700x2200, 512 tokens, the
# repetition guard off for ocrd (random weights loop from the start; the bare loop has no guard). openai: bench/openai_server.py,
# mlx-vlm's server (CUDA) at concurrency 16 and 64 on 64 pages and at 1 on 8 (openai-c1: that alone), against ocrd in-process on the same pages.
# GPU=h100 labels the results for the card the device lent (default h200); the JSONs this run wrote land in $OUT/r/.
set -uo pipefail
source /tmp/stage/device.sh env
mkdir -p /tmp/src && ln -sfn "$PWD" /tmp/src/ocrd
export PYTHONPATH=/tmp/src:$PYTHONPATH PYTHONUNBUFFERED=1
# One kernel cache for every row: each daemon row has a fresh state_dir, whose own cache
# (device.keep_compiled_kernels) would start cold and spend its first ~2 minutes compiling (seen:
# the first decode 118 s after the drop). A user's daemon pays that once; a bench row must not.
export MLX_PTX_CACHE_DIR=${MLX_PTX_CACHE_DIR:-/tmp/mlx-ptx-bench}
# fail here, not after a bench has waited out its timeouts on a daemon that could not start
python3 -c "import ocrd.daemon.supervisor, ocrd.daemon.api.server, ocrd.daemon.output.pdf" || exit 1
MODEL=${MODEL:-/tmp/model}
GPU=${GPU:-h200}
touch /tmp/gpu-sh-started
bench() { python3 bench/batch.py --model "$1" --max-tokens 512 --page-size 1700x2200 --no-guard "${@:2}"; }
pipe() { python3 bench/pipelined.py --model "$1" --pages 256 --max-tokens 512 --page-size 1700x2200 "${@:2}"; }
served() { python3 bench/openai_server.py --model "$MODEL" --mode gundam --max-tokens 512 --page-size 1700x2200 --no-guard --pairs 1 "$@"; }
q8() { [ -d /tmp/model8 ] || python3 -m mlx_vlm.convert --hf-path "$MODEL" --mlx-path /tmp/model8 -q --q-bits 8 2>&1 | tail -1; }
for step in "$@"; do
  case "$step" in
    small) bench "$MODEL" --mode small --pages 256 --batches 64,auto --skip-worker --label gpu-small-256
           bench "$MODEL" --mode small --pages 64 --batches 64,auto --skip-worker --label gpu-small-64 ;;
    modes) bench "$MODEL" --mode base --pages 64 --batches 64,auto --skip-worker --label gpu-base-64
           bench "$MODEL" --mode gundam --pages 64 --batches 64,auto --skip-worker --label gpu-gundam-64 ;;
    q8)    q8
           bench /tmp/model8 --mode small --pages 64 --batches 8,32,64,auto --skip-worker --label gpu-small-64-q8 ;;
    pipe-small)  pipe "$MODEL" --mode small --pairs ${PAIRS:-3} --no-guard --compare-plain --label $GPU-small ;;
    pipe-gundam) pipe "$MODEL" --mode gundam --pairs ${PAIRS:-3} --no-guard --compare-fixed --label $GPU-gundam ;;
    pairs-gundam) pipe "$MODEL" --mode gundam --pairs ${PAIRS:-3} --no-guard --compare-warm --label $GPU-gundam-pairs ;;
    pipe-q8)     q8; pipe /tmp/model8 --mode gundam --pairs ${PAIRS:-2} --no-guard --compare-quantized --label $GPU-gundam-q8 ;;
    realistic)   q8; pipe /tmp/model8 --mode gundam --pairs 1 --mixed --label $GPU-realistic ;;
    openai) served --pages 64 --concurrency 16,64 --label $GPU-gundam
            served --pages 8 --concurrency 1 --label $GPU-gundam-c1 ;;
    openai-c1) served --pages 8 --concurrency 1 --label $GPU-gundam-c1 ;;
    ctx)   python3 bench/gpu_contexts.py "$MODEL" ;;
  esac
done
mkdir -p "$OUT/r" && find bench/results -name '*.json' -newer /tmp/gpu-sh-started -exec cp {} "$OUT/r/" \;
true
