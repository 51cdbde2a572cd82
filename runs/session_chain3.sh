#!/bin/bash
# After session_chain2.sh: the length-penalty and w/o-average RL runs again, with the mended train_rl.py
# (all-equal float rewards now carry no signal; w/o average = each rollout's sum over its actions).
set -x
PY=.venv/bin/python
while pgrep -f session_chain2.sh > /dev/null; do sleep 10; done
date
rm -rf out/rl_len out/rl_noavg
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_len --max_steps 600 --eval_every 50 --lr 2e-5 --length_penalty 0.5 > runs/rl_len.log 2>&1
$PY evaluate.py --ckpt out/rl_len --method colar_rl_len --c 1,2,3,4,5 --out results/rl.json
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_noavg --max_steps 600 --eval_every 50 --lr 2e-5 --length_average false > runs/rl_noavg.log 2>&1
$PY evaluate.py --ckpt out/rl_noavg --method colar_rl_noavg --c 1,2,3,4,5 --out results/rl.json
date
