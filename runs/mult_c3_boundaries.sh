#!/usr/bin/env bash
# c = 3 on 4x4 multiplication from a c = 2 model, with the chunk boundaries moved. On the place-by-place chain at
# c = 3, seed 1337's c = 2 model learned to write every digit but the product's digit 4, whose chunk `prod[3] p3[4]
# prod[4]` holds both of its inputs (EXPERIMENTS.md, 2026-12-01). `data.multiplication --pad_first K` writes the first
# partial product with K more zeros, which moves every later token K places on: K = 2 makes that chunk `p3[4] prod[4]
# p3[5]`, K = 1 `prod[4] p3[5] prod[5]`. The same c = 2 model is trained at c = 3 alone on each chain (K = 2 first,
# then the plain chain it is compared with, then K = 1), each run probed on validation and its best checkpoint by
# validation evaluated on the public test file.
#
#   SEED=3 bash runs/mult_c2.sh            # first, the c = 2 model: out/mult4_c2_interleaved_seed3/colar_c2_14000
#   bash runs/mult_c3_boundaries.sh        # then the three runs of 6,000 steps: about 2 hours on a 2-core CPU
#   PADS="2" STEPS=12000 bash runs/mult_c3_boundaries.sh    # one chain, longer (its own run folder)
#
# Logged result (EXPERIMENTS.md, 2026-12-01): from seed 3's c = 2 model, c = 3 answers 58.0% of the test file with
# K = 2 and 56.4% on the plain chain, every digit written in both: the boundaries matter little; the starting model
# does (from seed 1337's c = 2 model the plain chain gave 3.9%). K = 1 not run yet.
#
# Rerun it after an interruption: a finished run folder is skipped, an unfinished one resumed, a recorded evaluation
# not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
INIT=${INIT:-out/mult4_c2_interleaved_seed3/colar_c2_14000}   # a model trained at c = 2 on the plain chain
PADS=${PADS:-2 0 1}
STEPS=${STEPS:-6000}
SEED=${SEED:-1337}
OUT=out/mult4_c3_boundaries
if [ ! -f "$INIT/latest" ]; then
    echo "error: no trained model in $INIT (run 'SEED=3 bash runs/mult_c2.sh' first, or set INIT)" >&2; exit 1
fi
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`

for pad in $PADS; do
    DATA=data/mult4_interleaved_pad$pad; if [ "$pad" = 0 ]; then DATA=data/mult4_interleaved; fi
    RUN=$OUT/colar_c3_pad${pad}_$STEPS
    # the same 200,000 train and 1,000 val problems as runs/mult_c2.sh (seed 1234), only the first step wider
    [ -f $DATA/train.txt ] || $PY -m data.multiplication --digits 4 --pad_first "$pad" --out $DATA
    resume=false; if [ -f $RUN/latest ]; then resume=true; fi
    $PY train_sft.py --data_dir $DATA --mode colar --init_from "$INIT" --c_values 3 --lr 1e-3 --eval_every 1000 \
        --eval_n 200 --max_latents 96 --seed $SEED --max_steps $STEPS --out_dir $RUN --resume $resume
    $PY latents.py --ckpt $RUN --c 3 --data_dir $DATA --split val --probe 200 --max_latents 96
    $PY evaluate.py --skip_done true --ckpt $RUN --data_dir $DATA --split test --c 3 --max_latents 96 \
        --method colar_c3_pad${pad}_$STEPS --out $OUT/results.json
done
