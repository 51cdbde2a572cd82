#!/usr/bin/env bash
# 4x4 (or 5x5) multiplication, one speed at a time: from a model trained at c = 2 alone, CoLaR SFT at c = 3 alone,
# then at c = 4 alone from that, then c = 5, each stage from the best checkpoint (by validation) of the one before, on
# the place-by-place chain. Each stage is probed on validation (latents.py --probe) and evaluated on the public test
# file.
# Trained at every speed at once the model answers 1% at c = 2 and nothing above (the demo); trained at c = 2 alone it
# matches CoT. Logged (EXPERIMENTS.md, 2026-12-01 and 02), from seed 3's c = 2 model (98.0% on test; CoT 95.8%): c = 3
# 56.4% after 6,000 steps, 98.6% after 10,000 more on a fresh schedule (STAGES=3:10000 INIT=.../colar_c3_pad0_6000);
# c = 4 (from the 6,000-step c = 3 model) 4.8% after 6,000 (one digit at chance), 90.6% after 10,000 more; c = 5
# 77.0% after 10,000, 90.9% after 8,000 more (STAGES=5:8000 INIT=.../colar_c5_pad0_10000; 0.95 of CoT). The default
# stages: about 3 hours on a 2-core CPU. Skipping the middle (STAGES="5:10000 5:8000" from a c = 2 model): 1.3%,
# then 9.2% (EXPERIMENTS.md, 2026-12-02, "c = 5 straight from a c = 2 model").
#
# PAD=K moves every chunk boundary: `data.multiplication --pad_first K` writes the first partial product with K more
# zeros, so every later token sits K places on (with K = 2 the c = 3 chunk `prod[3] p3[4] prod[4]`, which holds both
# inputs of its sum digit, becomes `p3[4] prod[4] p3[5]`). Logged (EXPERIMENTS.md, 2026-12-01): from seed 3's c = 2
# model c = 3 answers 56.4% of the test file on the plain chain and 58.0% with K = 2 (one digit at 88% with K = 2);
# from seed 1337's c = 2 model the plain chain gave 3.9%: the starting model matters, the boundaries little.
#
#   SEED=3 bash runs/mult_c2.sh              # first, the c = 2 model: out/mult4_c2_interleaved_seed3/colar_c2_14000
#   bash runs/mult_curriculum.sh             # then the stages below: about 40 minutes per 6,000 steps on 2 cores
#   DIGITS=5 INIT=out/mult5_c2_interleaved/colar_c2_14000 bash runs/mult_curriculum.sh   # 5x5 from its c = 2 model
#   STAGES="3:12000" bash runs/mult_curriculum.sh      # other stages, speed:steps, each from the one before
#   PAD=2 STAGES=3:6000 bash runs/mult_curriculum.sh   # c = 3 with the chunk boundaries moved two tokens
#   INIT=out/mult4_curriculum/colar_c4_pad0_10000 STAGES="5:10000 5:8000" ABLATION="--pool mean" TAG=mp \
#       bash runs/mult_curriculum.sh             # an ablation of the c = 5 stages (folders and method end in _mp)
#
# Rerun it after an interruption: a finished run folder is skipped, an unfinished one resumed, a recorded evaluation
# not repeated (the probe runs again).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIGITS=${DIGITS:-4}
INIT=${INIT:-out/mult${DIGITS}_c2_interleaved_seed3/colar_c2_14000}   # the model the first stage starts from
STAGES=${STAGES:-3:6000 4:6000 4:10000 5:10000}   # speed:steps; a speed again: a fresh schedule from its best
PAD=${PAD:-0}
SEED=${SEED:-1337}
ABLATION=${ABLATION:-}   # more train_sft.py flags for every stage (as runs/mult_c2.sh)
TAG=${TAG:-}             # the name that tells such a run's folders from CoLaR's
# runs/mult_c2.sh's 200,000 train and 1,000 val problems (seed 1234); with PAD, the same with the first step wider
DATA=data/mult${DIGITS}_interleaved; if [ "$PAD" != 0 ]; then DATA=${DATA}_pad$PAD; fi
OUT=out/mult${DIGITS}_curriculum
seen=" "
for stage in $STAGES; do
    if ! [[ $stage =~ ^[1-5]:[1-9][0-9]*$ ]]; then
        echo "error: STAGES holds '$stage', not speed:steps with a speed of 1..5 (e.g. 4:6000)" >&2; exit 1
    fi
    if [[ $seen == *" $stage "* ]]; then   # both would be the same run folder
        echo "error: STAGES holds '$stage' twice; a stage is named by its speed and steps" >&2; exit 1
    fi
    seen="$seen$stage "
done
if [ -n "$ABLATION" ] && [ -z "$TAG" ]; then echo "error: ABLATION needs a TAG to name its run folders" >&2; exit 1; fi
if [ ! -f "$INIT/latest" ]; then
    echo "error: no trained model in $INIT (run 'SEED=3 bash runs/mult_c2.sh' first, or set INIT)" >&2; exit 1
fi
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`
[ -f $DATA/train.txt ] || $PY -m data.multiplication --digits $DIGITS --pad_first "$PAD" --out $DATA

from=$INIT
for stage in $STAGES; do
    c=${stage%:*}; STEPS=${stage#*:}
    RUN=$OUT/colar_c${c}_pad${PAD}_$STEPS${TAG:+_$TAG}
    resume=false; if [ -f $RUN/latest ]; then resume=true; fi
    $PY train_sft.py --data_dir $DATA --mode colar --init_from "$from" --c_values $c --lr 1e-3 --eval_every 1000 \
        --eval_n 200 --max_latents 96 --seed $SEED --max_steps $STEPS --out_dir $RUN --resume $resume $ABLATION
    $PY latents.py --ckpt $RUN --c $c --data_dir $DATA --split val --probe 200 --max_latents 96
    $PY evaluate.py --skip_done true --ckpt $RUN --data_dir $DATA --split test --c $c --max_latents 96 \
        --method "$(basename $RUN)" --out $OUT/results.json
    from=$RUN
done
