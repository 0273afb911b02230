#!/usr/bin/env bash
# One device call that trains several recipes side by side on one GPU and runs the CUDA tests beside them, bringing
# every run back (finished: weights + result; unfinished: its resumable state) as one tar per run under $OUT. Parked runs (training/parked/) resume there.
# Prepare in the repo root first (ignored via .git/info/exclude, carried as ".gpu"):
#   .gpu/whl/            wheels the GPU image lacks (datasets, dill, multiprocess for Python 3.12)
#   .gpu/fashion-mnist/  the four Fashion-MNIST .gz files (/usr/share/datasets/fashion-mnist)
#   .gpu/parent/         final.safetensors + result.json of runs/resnet20.fmnist-s0 (the BNNs' parent and teacher)
# JOBS="resnet20_bnn:2 ..." (recipe:seed) and LIMIT (seconds) from the environment; carry states back into runs/
# with tar, resume on any machine with `python -m training.train training/recipes/<id>.yaml --seed N`.
set -u
T0=$(date +%s); LIMIT=${LIMIT:-420}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
export PYTHONUNBUFFERED=1 NVIDIA_TF32_OVERRIDE=0 ZOO_FASHION_MNIST_DIR=$PWD/.gpu/fashion-mnist OMP_NUM_THREADS=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
LOGS=/tmp/logs; mkdir -p runs/resnet20.fmnist-s0 $LOGS && cp .gpu/parent/* runs/resnet20.fmnist-s0/
JOBS=${JOBS:-"resnet20_sdbnn:1 resnet20_sdbnn:2 resnet20_ir2net:1 resnet20_ir2net:2"}
PIDS=""
for job in $JOBS; do
  arch=${job%:*}; seed=${job#*:}
  python3 -m training.train training/recipes/$arch.fmnist.yaml --seed $seed --run-dir runs/$arch.fmnist-s$seed \
    > $LOGS/$arch.fmnist-s$seed.log 2>&1 &
  PIDS="$PIDS $!"
done
( timeout 240 python3 -m pytest tests/test_cuda_kernel.py -m "not slow" -q -ra --noconftest -p no:cacheprovider > $LOGS/gpu_check_tests.log 2>&1 ) &
alive() { n=0; for p in $PIDS; do kill -0 $p 2>/dev/null && n=$((n+1)); done; echo $n; }
while [ "$(alive)" -gt 0 ] && [ "$(left)" -gt 25 ]; do
  sleep 15
  echo "t=$(( $(date +%s) - T0 ))s alive=$(alive) $(for j in $JOBS; do a=${j%:*}; s=${j#*:}; printf '%s-s%s:%s ' $a $s "$(tail -1 runs/$a.fmnist-s$s/metrics.jsonl 2>/dev/null | grep -o '"epoch": [0-9]*' | grep -o '[0-9]*')"; done)"
done
for p in $PIDS; do kill $p 2>/dev/null; done; sleep 4
tail -8 $LOGS/gpu_check_tests.log | cut -c1-400
for j in $JOBS; do a=${j%:*}; s=${j#*:}; id=$a.fmnist-s$s; tail -c 300 $LOGS/$id.log | tr '\r' '\n' | tail -1
  if [ -f runs/$id/result.json ]; then tar cf $OUT/$id.tar --exclude=state runs/$id $LOGS/$id.log
  else tar cf $OUT/$id.tar runs/$id $LOGS/$id.log; fi 2>/dev/null
done
tar cf $OUT/gpu_check.tar $LOGS/gpu_check* 2>/dev/null; ls -la $OUT
