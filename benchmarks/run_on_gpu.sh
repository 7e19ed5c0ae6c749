#!/usr/bin/env bash
# Every GPU row of docs/performance.md in one run, on a CUDA machine with loqi installed (or wheels to install).
#   bash benchmarks/run_on_gpu.sh OUT_DIR [PARTS]
# PARTS: comma list of eval, cache, protocol, profile, serve, search, degrade, distill
#        (default eval,cache,protocol,profile,serve,search: issue #25's rows; their time limits add up to 15 minutes,
#        the sizes were chosen to finish well inside them, which no GPU run has confirmed yet).
# With WHEELS=DIR set, first installs every wheel in DIR into a private site dir (no network, no dependencies
# resolved: the wheels must be complete; see scripts/build_wheels.sh). Each part has its own time limit so that
# one slow part cannot take the others' results with it; every part writes its table and JSON into OUT_DIR.
# DEVICE=cpu SMOKE=1 runs every part at toy sizes on a CPU: a check of the script itself, not a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: run_on_gpu.sh OUT_DIR [PARTS]}"
PARTS=",${2:-eval,cache,protocol,profile,serve,search},"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LOQI_OFFLINE=1
if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/loqi-site $WHEELS/*.whl || exit 1
    export PYTHONPATH="/tmp/loqi-site${PYTHONPATH:+:$PYTHONPATH}"
fi
CPUS=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
WORKERS=$((CPUS > 1 ? CPUS - 1 : 1))   # what loqi gives the extraction loader on CUDA: every CPU but one
DATA="${DATA:-/tmp/loqi-bench-images}"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
fi
python3 -c "import torch, torchvision, loqi_core; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cpus', $CPUS)" | tee -a "$OUT/machine.txt"
# sizes: the measurement, or toy ones for SMOKE=1
if [ -n "${SMOKE:-}" ]; then
    IMAGES=32 CACHE_IMAGES=32 BATCH=8 FILE=96x128 PROUNDS=(--protocol-rounds 2) LIMIT=3 LITE=64x64 MODELS="lite0-gem:64x64 mixvpr:"
    PROTOCOL=(--protocol-methods mixvpr,netvlad --protocol-batch 2 --native-size 96x128) THREADS=(--threads 1)
    PROFILE=(--batch 2 --size 56x56 --steps 1 --set model.encoder_params.depth=2)
    SERVE=(--clients 1,2 --requests 6 --seconds 5 --batch-sizes 2 --threads 1) SEARCH=(--search-scale 0.01)
else
    IMAGES=8192 CACHE_IMAGES=2048 BATCH=128 FILE=480x640 PROUNDS=(--protocol-rounds 3 --protocol-batches 2) LIMIT=1 LITE=224x224 MODELS="lite0-gem:224x224 mixvpr: salad:"
    PROTOCOL=(--protocol-methods mixvpr,cricavpr,salad,netvlad,anyloc --native-size 480x640)
    PROFILE=(--batch 48 --steps 5) SERVE=(--clients 1,8,64 --requests 400 --seconds 15 --threads 8) SEARCH=() THREADS=()
fi
part() { [[ "$PARTS" == *",$1,"* ]]; }
EVAL=(python3 benchmarks/eval_throughput.py --device "$DEVICE" --workers "$WORKERS" --data "$DATA" --batch "$BATCH" "${THREADS[@]}")
if part eval; then
    # steady state: JPEG and PNG files of 480x640; loader only, bare forward, extraction (cache off), per model
    for m in $MODELS; do
        name="${m%%:*}" size="${m##*:}"
        timeout $((120 * LIMIT)) "${EVAL[@]}" --method "$name" ${size:+--model-size "$size"} --images "$IMAGES" \
            --file-size "$FILE" --formats jpeg,png --skip decode,handover,cache,protocol,search,ivfpq --json "$OUT/eval-$name.json" \
            2>&1 | tee "$OUT/eval-$name.md"
    done
fi
if part cache; then
    # the shard hand-over, and the degraded-image cache (jpeg10): first run, raw shards against the PNG shards of
    # before, extraction on a hit
    timeout $((100 * LIMIT)) "${EVAL[@]}" --method lite0-gem --model-size "$LITE" --images "$CACHE_IMAGES" --file-size "$FILE" \
        --formats jpeg --skip decode,extract,protocol,search,ivfpq --json "$OUT/cache.json" 2>&1 | tee "$OUT/cache.md"
fi
if part protocol; then
    # img/s under upstream and paper (input size, precision, batch) at a 480x640 image, every Table II method
    timeout $((150 * LIMIT)) "${EVAL[@]}" --skip decode,handover,extract,cache,search,ivfpq "${PROTOCOL[@]}" "${PROUNDS[@]}" \
        --json "$OUT/protocol.json" 2>&1 | grep -v Warning | tee "$OUT/protocol.md"
fi
if part profile; then
    # CricaVPR's bare distillation step: where the time goes (on an H100 it ran at 0.23 of DESIGN §7's H200 figure)
    timeout $((60 * LIMIT)) python3 benchmarks/profile_step.py --method cricavpr --device "$DEVICE" "${PROFILE[@]}" \
        --json "$OUT/profile-cricavpr.json" 2>&1 | grep -v "Warning\|USDT\|DeviceProperties" | tee "$OUT/profile-cricavpr.md"
fi
if part serve; then
    timeout $((120 * LIMIT)) python3 benchmarks/serve_load.py --device "$DEVICE" "${SERVE[@]}" --json "$OUT/serve.json" \
        2>&1 | grep -v Warning | tee "$OUT/serve.md"
fi
if part search; then
    backends=$([ "$DEVICE" = cuda ] && echo flat,torch-cuda || echo flat,torch-cpu)
    timeout $((90 * LIMIT)) python3 benchmarks/eval_throughput.py --skip decode,handover,extract,cache,protocol,ivfpq "${SEARCH[@]}" \
        --search-backends "$backends" --repeats 2 --json "$OUT/search.json" 2>&1 | tee "$OUT/search.md"
fi
if part degrade; then
    timeout 60 python3 benchmarks/degrade_throughput.py --size 320x320 --specs jpeg10 --gpu --gpu-batch 64 --repeats 2 \
        2>&1 | tee "$OUT/degrade.md"
fi
if part distill; then
    timeout "${DISTILL_TIMEOUT:-240}" python3 benchmarks/distill_throughput.py --device "$DEVICE" --batch 48 --steps 20 --warmup 5 \
        --methods "${METHODS:-mixvpr,cricavpr,salad,netvlad,lite0-gem,anyloc,boq}" \
        --set anyloc:model.aggregator_params.vocabulary=random --json "$OUT/distill.json" 2>&1 | grep -v Warning | tee "$OUT/distill.md"
fi
