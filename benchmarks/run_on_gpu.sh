#!/usr/bin/env bash
# Every GPU row of docs/performance.md in one run, on a CUDA machine with loqi installed (or wheels to install).
#   bash benchmarks/run_on_gpu.sh OUT_DIR [PARTS]      PARTS: comma list of degrade,eval,distill (default: all)
# With WHEELS=DIR set, first installs every wheel in DIR into a private site dir (no network, no dependencies
# resolved: the wheels must be complete; see scripts/build_wheels.sh). Each part has its own time limit so that
# one slow part cannot take the others' results with it; every part writes its table and JSON into OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: run_on_gpu.sh OUT_DIR [PARTS]}"
PARTS=",${2:-degrade,eval,distill},"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LOQI_OFFLINE=1
if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/loqi-site $WHEELS/*.whl || exit 1
    export PYTHONPATH="/tmp/loqi-site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, torchvision, loqi_core; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/machine.txt"
part() { [[ "$PARTS" == *",$1,"* ]]; }
if part degrade; then
    timeout 60 python3 benchmarks/degrade_throughput.py --size 320x320 --specs jpeg10 --gpu --gpu-batch 64 --repeats 2 \
        2>&1 | tee "$OUT/degrade.md"
fi
if part eval; then
    for m in lite0-gem:224 mixvpr:320; do
        timeout 90 python3 benchmarks/eval_throughput.py --method "${m%%:*}" --size "${m##*:}" --images 1024 --batch 128 \
            --workers 12 --device cuda --skip search,ivfpq --json "$OUT/eval-${m%%:*}.json" 2>&1 | tee "$OUT/eval-${m%%:*}.md"
    done
    timeout 120 python3 benchmarks/eval_throughput.py --skip extract,ivfpq --search-backends flat,torch-cuda --repeats 2 \
        --json "$OUT/search.json" 2>&1 | tee "$OUT/search.md"
fi
if part distill; then
    timeout "${DISTILL_TIMEOUT:-240}" python3 benchmarks/distill_throughput.py --device cuda --batch 48 --steps 20 --warmup 5 \
        --methods "${METHODS:-mixvpr,cricavpr,salad,netvlad,lite0-gem,anyloc,boq}" \
        --set anyloc:model.aggregator_params.vocabulary=random --json "$OUT/distill.json" 2>&1 | grep -v Warning | tee "$OUT/distill.md"
fi
