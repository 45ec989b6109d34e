#!/usr/bin/env bash
# What ran on the lent GPU machine for README's Performance section. That machine has torch but no
# Hydra and no network: carry .whl/ (hydra-core, omegaconf, antlr4, hydra-joblib-launcher wheels) and
# .gpudata/ (Debian's dataset-fashion-mnist, unpacked). Usage: bash scripts/gpu.sh STEP... ; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD ABLATE_DATA=/tmp/data MPLBACKEND=Agg PYTHONUNBUFFERED=1
mkdir -p /tmp/data/FashionMNIST/raw && cp .gpudata/usr/share/datasets/fashion-mnist/*.gz /tmp/data/FashionMNIST/raw/
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
step() {  # step NAME TIMEOUT CMD...: run, log to $OUT/NAME.log, show its tail
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "== $name: rc=$? in $((SECONDS - t0)) s"
  tail -n "${TAIL:-12}" "$OUT/$name.log"
}
for s in "$@"; do
  case $s in
    tests) step tests 240 python3 -m pytest -q -x tests/test_speed.py tests/test_train.py -p no:cacheprovider -k "not bench_smoke" ;;
    agree_pipes) step agree_pipes 300 python3 -m ablate.bench --no-pipelines --grid --jobs 6 --grid-epochs 10 \
        --grid-axes trainer.pipeline=resident,dataloader trainer.seed=0,1,2 --sweep-dir /tmp/agree_pipes \
        && cp /tmp/agree_pipes/report/report.md "$OUT/agree_pipes.md" ;;
    agree_graph) step agree_graph 200 python3 -m ablate.bench --no-pipelines --grid --jobs 6 --grid-epochs 10 \
        --grid-axes trainer.cuda_graph=false,true trainer.seed=0,1,2 --sweep-dir /tmp/agree_graph \
        && cp /tmp/agree_graph/report/report.md "$OUT/agree_graph.md" ;;
    bench) step bench 200 python3 -m ablate.bench --epochs 5 ;;
    concurrent) step concurrent 200 python3 -m ablate.bench --no-pipelines --concurrent 1,2,4,8 --epochs 4 ;;
    concurrent_graph) step concurrent_graph 200 python3 -m ablate.bench --no-pipelines --concurrent 1,2,4,8 --epochs 4 --cuda-graph-concurrent ;;
    grid) step grid 300 python3 -m ablate.bench --no-pipelines --grid --jobs "${JOBS:-4}" ;;
    *) echo "unknown step $s" ;;
  esac
done
