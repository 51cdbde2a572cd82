#!/bin/bash
# One prepared GPU check (run through the device tool on one H100; every step has its own time limit):
# the test suite there (the CUDA test runs), train_sft under torchrun with nccl, bench.py on cuda, then demo.py
# --quick and as much of the full demo as the time left allows, with bf16 autocast. Logs and results go to $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
mkdir -p /tmp/q; t0=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - t0) )); }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"; nproc; } > $OUT/env.txt 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests > $OUT/pytest.log 2>&1; echo "pytest rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
timeout 90 python3 bench.py --device cuda --batch_size 256 --questions 1024 --out $OUT/bench_cuda.json > $OUT/bench.log 2>&1
echo "bench rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
timeout 120 python3 demo.py --quick true --results /tmp/q/demo_cuda.json > $OUT/demo_quick.log 2>&1; cp /tmp/q/demo_cuda_quick.json $OUT/
echo "quick rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
timeout 60 torchrun --standalone --nproc_per_node=1 train_sft.py --data_dir data/synth_quick --mode cot --max_steps 60 \
  --eval_every 30 --out_dir /tmp/nccl_cot > /tmp/nccl.log 2>&1; echo "nccl rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
timeout $(left 500) python3 demo.py --out_dir /tmp/full --results /tmp/full_demo.json > $OUT/demo_full.log 2>&1
tail -5 /tmp/nccl.log >> $OUT/env.txt; echo "full rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
cp /tmp/full_demo.json $OUT/ 2>/dev/null
cat $OUT/env.txt; tail -3 $OUT/pytest.log; grep -i "error\|traceback" $OUT/*.log | head -20
