#!/usr/bin/env bash
# RL where it has something to shorten. On the default task every question has exactly one chain, so RL cannot make
# chains shorter; here half the chains end with a redundant check step (`... <<3*3=9>> <<9=9>> #### 9`), so a question
# has two correct chains, one about 1.3 latents longer at c = 5. The recipe: the task variant, CoT (1,200 steps),
# CoLaR (3,000 steps from the CoT model, which leaves room at c = 5), RL at c = 5 with the paper's settings (0/1
# reward, length averaging, no length penalty; 600 steps), and both models on the test split at c = 1..5, greedy and
# sampled over 5 seeds, into results/rl_check.json.
#
#   bash runs/rl_check_task.sh                # about 35 minutes on a 2-core CPU
#   VARIANTS=1 bash runs/rl_check_task.sh     # also RL without length averaging, with a length penalty, and at lr 1e-4
#
# Logged result (EXPERIMENTS.md, results/rl_check.json): c = 5 sampled 51.4% -> 64.1%, #L 11.75 -> 11.27.
# Rerun it after an interruption: each run folder it finds is resumed (a finished one ends at once), each
# recorded evaluation left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`
DATA=data/synth_check
RESULTS=${RESULTS:-results/rl_check.json}

train() {  # train OUT_DIR COMMAND...: a new run, or the one OUT_DIR holds resumed (a finished one ends at once)
  local out=$1; shift
  if [ -f "$out/latest" ]; then "$@" --resume true; else "$@"; fi
}

# the task variant: 100,000 train, 500 val, 1,000 test questions; half the chains end with a check step
[ -f $DATA/train.txt ] || $PY -m data.synthetic --check_p 0.5 --out $DATA

# SFT: CoT, then CoLaR from it (the first demo's recipe, 3,000 CoLaR steps)
train out/check_cot $PY train_sft.py --data_dir $DATA --out_dir out/check_cot --max_steps 1200
train out/check_colar $PY train_sft.py --mode colar --data_dir $DATA --init_from out/check_cot --out_dir out/check_colar \
    --max_steps 3000 --lr 1e-3 --eval_every 1000 --eval_n 200
$PY evaluate.py --skip_done true --ckpt out/check_colar --method check_sft --c 1,2,3,4,5 --out $RESULTS

# RL at c = 5 (lr 2e-5, sigma floor 0.1: the defaults), validation every 50 steps picks the checkpoint
train out/check_rl $PY train_rl.py --init_from out/check_colar --data_dir $DATA --c 5 --out_dir out/check_rl \
    --max_steps 600 --eval_every 50
$PY evaluate.py --skip_done true --ckpt out/check_rl --method check_rl --c 1,2,3,4,5 --out $RESULTS

if [ "${VARIANTS:-0}" = 1 ]; then
  # the paper's "w/o average" ablation, and a length penalty (a correct answer earns 1 - 0.5 * #L / max_latents)
  train out/check_rl_noavg $PY train_rl.py --init_from out/check_colar --data_dir $DATA --c 5 --out_dir out/check_rl_noavg \
      --max_steps 600 --eval_every 50 --length_average false
  $PY evaluate.py --skip_done true --ckpt out/check_rl_noavg --method check_rl_noavg --c 1,2,3,4,5 --out $RESULTS
  train out/check_rl_len $PY train_rl.py --init_from out/check_colar --data_dir $DATA --c 5 --out_dir out/check_rl_len \
      --max_steps 600 --eval_every 50 --length_penalty 0.5
  $PY evaluate.py --skip_done true --ckpt out/check_rl_len --method check_rl_len --c 1,2,3,4,5 --out $RESULTS
  # a 5x larger learning rate, with and without length averaging: both collapse
  train out/check_rl_lr1e4 $PY train_rl.py --init_from out/check_colar --data_dir $DATA --c 5 --out_dir out/check_rl_lr1e4 \
      --max_steps 600 --eval_every 50 --lr 1e-4
  $PY evaluate.py --skip_done true --ckpt out/check_rl_lr1e4 --method check_rl_lr1e4 --c 5 --out $RESULTS
  train out/check_rl_lr1e4_noavg $PY train_rl.py --init_from out/check_colar --data_dir $DATA --c 5 \
      --out_dir out/check_rl_lr1e4_noavg --max_steps 600 --eval_every 50 --lr 1e-4 --length_average false
  $PY evaluate.py --skip_done true --ckpt out/check_rl_lr1e4_noavg --method check_rl_lr1e4_noavg --c 5 --out $RESULTS
fi
$PY report.py --results $RESULTS   # the table of every model on the check task
