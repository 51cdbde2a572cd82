#!/bin/bash
# After session_chain5.sh: RL at c = 5 on the check task (issue 4): the paper's 0/1 reward, its "w/o average"
# ablation, and the length penalty; each evaluated on the test split at c = 1..5 (greedy + 5 sampled seeds).
set -x
PY=.venv/bin/python
while pgrep -f session_chain5.sh > /dev/null; do sleep 10; done
date
$PY evaluate.py --ckpt out/check_colar --method check_sft --c 1,2,3,4,5 --out results/rl_check.json > runs/check_sft_eval.log 2>&1
date
$PY train_rl.py --init_from out/check_colar --data_dir data/synth_check --c 5 --out_dir out/check_rl --max_steps 600 --eval_every 50 > runs/check_rl.log 2>&1
$PY evaluate.py --ckpt out/check_rl --method check_rl --c 1,2,3,4,5 --out results/rl_check.json > runs/check_rl_eval.log 2>&1
date
$PY train_rl.py --init_from out/check_colar --data_dir data/synth_check --c 5 --out_dir out/check_rl_noavg --max_steps 600 --eval_every 50 --length_average false > runs/check_rl_noavg.log 2>&1
$PY evaluate.py --ckpt out/check_rl_noavg --method check_rl_noavg --c 1,2,3,4,5 --out results/rl_check.json > runs/check_rl_noavg_eval.log 2>&1
date
$PY train_rl.py --init_from out/check_colar --data_dir data/synth_check --c 5 --out_dir out/check_rl_len --max_steps 600 --eval_every 50 --length_penalty 0.5 > runs/check_rl_len.log 2>&1
$PY evaluate.py --ckpt out/check_rl_len --method check_rl_len --c 1,2,3,4,5 --out results/rl_check.json > runs/check_rl_len_eval.log 2>&1
date
