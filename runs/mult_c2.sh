#!/usr/bin/env bash
# Compressed latents on iCoT's 4x4 (or 5x5) multiplication at c = 2, and where they fail. The recipe: the data
# (iCoT's rule, its public test file; the chain written place by place, data/multiplication.py --format), CoT from
# scratch with place tokens (an 8,000-step schedule stopped at step 4,000), CoLaR SFT from it at the chosen speeds
# (by default c = 2 only, 8,000 steps, then resumed in a copy of its folder to 14,000: the cosine schedule stretched
# over the new length), the probe on 200 validation problems (the answer from the true compressed chain and from the
# model's own latents; per latent, whether it is nearest its own chunk; per digit, whether it is written), and the
# test accuracy of the CoT model and of both CoLaR checkpoints.
#
#   bash runs/mult_c2.sh                                   # 80-125 minutes on a 2-core CPU
#   SEED=2 bash runs/mult_c2.sh                            # another training seed (its own folders)
#   DIGITS=5 bash runs/mult_c2.sh                          # 5x5, the same recipe: about 3.5 hours
#   LAG=3 C_VALUES=3 STEPS=6000 LONG=0 bash runs/mult_c2.sh   # sum digits 3 places later (--lag): c = 3 still 0%
#   FORMAT=product bash runs/mult_c2.sh                    # the chain number by number: c = 2 stays near 0%
#   C_VALUES=1,2,3,4,5 STEPS=6000 LONG=0 bash runs/mult_c2.sh   # every speed at once, as the demo trains
#   ABLATION="--pool mean" TAG=mp LONG=0 bash runs/mult_c2.sh    # an ablation (DL: --deterministic true, NLL:
#                                           # --latent_loss nll, OC: --chunk_labels false), beside CoLaR's run
#
# Logged result (EXPERIMENTS.md, 2026-11-30, seed 1337): CoT 99.7% on the public test file; CoLaR trained at c = 2
# only answers 72.1% greedy after 8,000 steps (71.6 +- 0.3% sampled), every digit of its latents written at 90% or
# more, and 95.6% after 14,000 (95.7 +- 0.3% sampled); over training seeds 1337, 2 and 3 (2026-12-01) CoT 97.6%
# (95.8-99.7) and CoLaR c = 2 95.4% (92.6-98.0): 0.95-1.02 of CoT's accuracy in each. With the product chain, c = 2
# only answered 0-3% of validation over 11,000 steps (5.0% of test after 19,000), two digits of each chain left at
# chance.
# iCoT's test file is read from $COLAR_DATA/mult_NxN/test_bigbench.txt when set, else downloaded once.
# Rerun it after an interruption: a finished run folder is skipped, an unfinished one resumed, a recorded evaluation
# not repeated (the probe runs again).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIGITS=${DIGITS:-4}
FORMAT=${FORMAT:-interleaved}
LAG=${LAG:-0}            # interleaved: each running-sum digit written this many places later
C_VALUES=${C_VALUES:-2}
STEPS=${STEPS:-8000}
LONG=${LONG:-14000}   # then a copy resumed to this many steps (0: none)
SEED=${SEED:-1337}
ABLATION=${ABLATION:-}   # more train_sft.py flags for the CoLaR stage
TAG=${TAG:-}             # the name that tells such a run's folder from CoLaR's
CHAIN=$FORMAT; if [ "$LAG" != 0 ]; then CHAIN=${FORMAT}_lag$LAG; fi
DATA=data/mult${DIGITS}_$CHAIN
OUT=out/mult${DIGITS}_c2_$CHAIN
if [ "$SEED" != 1337 ]; then OUT=${OUT}_seed$SEED; fi
COLAR=$OUT/colar_c${C_VALUES//,/}${TAG:+_$TAG}
if [ -n "$ABLATION" ] && [ -z "$TAG" ]; then echo "error: ABLATION needs a TAG to name its run folder" >&2; exit 1; fi
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`

train() {  # train OUT_DIR COMMAND...: a new run, or the one OUT_DIR holds resumed (a finished one ends at once)
  local out=$1; shift
  if [ -f "$out/latest" ]; then "$@" --resume true; else "$@"; fi
}
colar() {  # colar OUT_DIR STEPS: the CoLaR stage from the CoT model
  train "$1" $PY train_sft.py --data_dir $DATA --mode colar --init_from $OUT/cot --c_values $C_VALUES --lr 1e-3 \
      --eval_every 1000 --eval_n 200 --max_latents 96 --seed $SEED $ABLATION --max_steps "$2" --out_dir "$1"
}

# 200,000 train and 1,000 val problems from seed 1234, none with an operand pair of the public test file
[ -f $DATA/train.txt ] || $PY -m data.multiplication --digits $DIGITS --format $FORMAT --lag $LAG --out $DATA

# CoT: 4,000 steps of an 8,000-step schedule (the learning rate still high when it stops)
train $OUT/cot $PY train_sft.py --data_dir $DATA --mode cot --tokenizer place --max_steps 8000 \
    --stop_at 4000 --eval_every 1000 --eval_n 500 --max_latents 96 --seed $SEED --out_dir $OUT/cot

# CoLaR SFT from it: the demo's CoLaR recipe (latent weight 10, lr 1e-3) at the chosen speeds
colar $COLAR $STEPS

$PY latents.py --ckpt $COLAR --data_dir $DATA --split val --probe 200 --max_latents 96
$PY evaluate.py --skip_done true --ckpt $OUT/cot --data_dir $DATA --split test --out $OUT/results.json
$PY evaluate.py --skip_done true --ckpt $COLAR --data_dir $DATA --split test --max_latents 96 \
    --method colar${TAG:+_$TAG} --out $OUT/results.json

# longer: a copy of the run folder resumed (each run folder is one run; the first stays as it was)
if [ "$LONG" -gt 0 ]; then
    # copied whole or not at all (an interrupted copy is made again, never resumed half-copied)
    if [ ! -d ${COLAR}_$LONG ]; then
        rm -rf ${COLAR}_$LONG.tmp && cp -r $COLAR ${COLAR}_$LONG.tmp && mv ${COLAR}_$LONG.tmp ${COLAR}_$LONG || exit 1
    fi
    colar ${COLAR}_$LONG $LONG
    $PY evaluate.py --skip_done true --ckpt ${COLAR}_$LONG --data_dir $DATA --split test --max_latents 96 \
        --method colar${TAG:+_$TAG}_$LONG --out $OUT/results.json
fi
