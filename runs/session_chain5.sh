#!/bin/bash
# Issue 4: a task variant where a question has two correct chains (half end with a redundant check step), so that
# RL has a shorter chain to find. Same recipe as the first demo's CoLaR model (CoT 1,200 steps, CoLaR 3,000 steps).
set -x
PY=.venv/bin/python
date
$PY -m data.synthetic --check_p 0.5 --out data/synth_check
$PY train_sft.py --mode cot --data_dir data/synth_check --out_dir out/check_cot --max_steps 1200 > runs/check_cot.log 2>&1
date
$PY train_sft.py --mode colar --data_dir data/synth_check --init_from out/check_cot --out_dir out/check_colar --max_steps 3000 --lr 1e-3 --eval_every 1000 --eval_n 200 > runs/check_colar.log 2>&1
date
$PY evaluate.py --ckpt out/check_colar --data_dir data/synth_check --split val --method check_colar_sft --c 1,2,3,4,5 --seeds 0 --out /tmp/check_val.json > runs/check_colar_eval.log 2>&1
date
