#!/usr/bin/env bash
# Where compressed latents fail on iCoT's 4x4 multiplication: reading or writing. The recipe: the data (iCoT's rule,
# its public test file), CoT from scratch with place tokens (an 8,000-step schedule stopped at step 4,000), its test
# accuracy, CoLaR SFT from it at c in {1, 2} (3,000 steps), and the probe on 200 validation problems: the answer when
# the model is fed the true compressed chain (reading), with its own latents (generated), and per latent position how
# often a latent is nearest its own true chunk, written from the true chain (one step) and generated (free-running).
#
#   bash runs/mult4_reading_writing.sh          # about 45 minutes on a 2-core CPU
#   C_VALUES=1,2,3,4,5 STEPS=6000 bash runs/mult4_reading_writing.sh   # every speed, as the clock task trains
#
# Logged result (EXPERIMENTS.md, 2026-11-30): CoT 98.6% on the public test; CoLaR c = 1 99.0%, c = 2 0.0% on
# validation; fed the true chain c = 2 answers 99.5%; its latents written from the true chain are nearest their own
# chunk 82% of the time on average (93-100% where the chunk holds delimiters, shift zeros or the first partial
# product's low digits, 10-65% where it holds carried digits of a partial product or a running sum).
# iCoT's test file is read from $COLAR_DATA/mult_4x4/test_bigbench.txt when set, else downloaded once.
# A finished run folder is skipped; to continue an interrupted one, rerun its command with --resume true.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`
DATA=data/mult4
C_VALUES=${C_VALUES:-1,2}
STEPS=${STEPS:-3000}
COLAR=out/mult4_probe/colar_c${C_VALUES//,/}

train() {  # train OUT_DIR COMMAND...: run COMMAND unless OUT_DIR already holds a run
  local out=$1; shift
  if [ -f "$out/latest" ]; then echo "== $out exists, skipped"; else "$@"; fi
}

# 200,000 train and 1,000 val problems from seed 1234, none with an operand pair of the public test file
[ -f $DATA/train.txt ] || $PY -m data.multiplication --digits 4 --out $DATA

# CoT: a 2,000-step schedule decays the learning rate too early to learn the task; 4,000 steps of 8,000 do
train out/mult4_probe/cot $PY train_sft.py --data_dir $DATA --mode cot --tokenizer place --max_steps 8000 \
    --stop_at 4000 --eval_every 1000 --eval_n 500 --out_dir out/mult4_probe/cot
$PY evaluate.py --ckpt out/mult4_probe/cot --data_dir $DATA --split test --decode greedy \
    --out out/mult4_probe/results.json

# CoLaR SFT from it: the clock task's recipe (latent weight 10, lr 1e-3) at the chosen speeds
train $COLAR $PY train_sft.py --data_dir $DATA --mode colar --init_from out/mult4_probe/cot --c_values $C_VALUES \
    --max_steps $STEPS --lr 1e-3 --eval_every 1000 --eval_n 200 --max_latents 96 --out_dir $COLAR

$PY latents.py --ckpt $COLAR --data_dir $DATA --split val --probe 200 --max_latents 96
