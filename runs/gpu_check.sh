#!/usr/bin/env bash
# Checks on a machine with a CUDA GPU, each under its own time limit so that the whole takes minutes: the test
# suite (its CUDA-only bf16 test runs there), bench.py on cuda, the quick demo (bf16 autocast), and train_sft.py under
# torchrun with the nccl backend on every GPU. Logs and records go to $OUT; a summary is printed at the end.
#
#   bash runs/gpu_check.sh
#   PY=python3 OUT=out/gpu_check T_TESTS=150 bash runs/gpu_check.sh
#
# Needs a Python with a CUDA build of torch and the packages: pip install -r requirements.txt, then
# pip install -e ".[test,plot,hf,gpt2]". One H100 ran these checks (tests cut at 150 s, bench at 90 s) in 6.6 minutes
# (results/logs/h100/env.txt; the logs beside it).
set -uo pipefail   # not -e: a failed check is reported, and the next one still runs
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-out/gpu_check}
T_TESTS=${T_TESTS:-900}; T_BENCH=${T_BENCH:-300}; T_QUICK=${T_QUICK:-600}; T_DDP=${T_DDP:-180}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
t0=$(date +%s)
note() { echo "$1 rc $2 at $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
  nproc; } > "$OUT/env.txt" 2>&1
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: $PY has no CUDA device (torch.cuda.is_available() is False); see $OUT/env.txt"; exit 1
fi
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")

timeout "$T_TESTS" $PY -m pytest -q -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1; note pytest $?
timeout "$T_BENCH" $PY bench.py --device cuda --batch_size 256 --questions 1024 --out "$OUT/bench_cuda.json" \
    > "$OUT/bench.log" 2>&1; note bench $?
timeout "$T_QUICK" $PY demo.py --quick true --out_dir "$OUT/runs" --results "$OUT/demo.json" \
    > "$OUT/demo_quick.log" 2>&1; note quick_demo $?          # records: $OUT/demo_quick.json, .md, .png
[ -f data/synth_quick/train.txt ] || $PY -m data.synthetic --steps_min 3 --steps_max 4 --out data/synth_quick > /dev/null
rm -rf "$OUT/nccl_cot"  # this check's own run, made again each time (a run folder is never trained into twice)
timeout "$T_DDP" $PY -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train_sft.py \
    --data_dir data/synth_quick --mode cot --max_steps 60 --eval_every 30 --out_dir "$OUT/nccl_cot" \
    > "$OUT/torchrun.log" 2>&1; note "torchrun_nccl x$NGPU" $?

echo "== summary ($OUT)"; cat "$OUT/env.txt"
tail -1 "$OUT/pytest.log"; grep -h "overhead\|OVER\|within" "$OUT/bench.log"; grep -h "stage times" "$OUT/demo_quick.log"
tail -2 "$OUT/torchrun.log"
grep -il "traceback" "$OUT"/*.log || true
