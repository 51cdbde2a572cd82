#!/usr/bin/env bash
# Both trainers under torchrun with two CPU processes (the gloo backend), from the demo's CoT model: the demo's CoLaR
# stage split in two (32 sequences per process, 64 per optimizer step, as in the one-process run), then RL at c = 5,
# then the test evaluation of both. torchrun runs DDP in the usual idiom (per-rank seeds, rank-strided rows, the loss
# divided by the gradient-accumulation steps), so a two-process run matches one process with the same total batch
# within float tolerance, not to the last bit. Only process 0 validates, prints and writes checkpoints.
#
#   bash runs/torchrun_cpu.sh                            # the full-length stages
#   COLAR_STEPS=200 RL_STEPS=20 bash runs/torchrun_cpu.sh   # a few minutes, to see it work
#
# Needs out/cot (the demo's CoT stage; trained here first when missing, 6 minutes on a 2-core CPU). Not timed: on
# 2 cores the two processes share them (torchrun gives each one thread), so expect at least the one-process time.
# Rerun it after an interruption: each run folder it finds is resumed (a finished one ends at once), each
# recorded evaluation left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`
COLAR_STEPS=${COLAR_STEPS:-6000}
RL_STEPS=${RL_STEPS:-600}
TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node=2"   # the `torchrun` command

train() {  # train OUT_DIR COMMAND...: a new run, or the one OUT_DIR holds resumed (a finished one ends at once)
  local out=$1; shift
  if [ -f "$out/latest" ]; then "$@" --resume true; else "$@"; fi
}

[ -f data/synth/train.txt ] || $PY -m data.synthetic
train out/cot $PY train_sft.py --out_dir out/cot

train out/colar_ddp $TORCHRUN train_sft.py --mode colar --init_from out/cot --out_dir out/colar_ddp \
    --batch_size 32 --total_batch_size 64 --max_steps "$COLAR_STEPS" --lr 1e-3 --eval_every 1000 --eval_n 200
train out/colar_rl_ddp $TORCHRUN train_rl.py --init_from out/colar_ddp --c 5 --out_dir out/colar_rl_ddp \
    --max_steps "$RL_STEPS" --eval_every 100

$PY evaluate.py --skip_done true --ckpt out/colar_ddp --method colar --c 1,2,3,4,5 --decode greedy --out out/ddp.json
$PY evaluate.py --skip_done true --ckpt out/colar_rl_ddp --method colar_rl --c 1,2,3,4,5 --decode greedy --out out/ddp.json
$PY report.py --results out/ddp.json --decode greedy   # compare with results/demo.md, the one-process run
