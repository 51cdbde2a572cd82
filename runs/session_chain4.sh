#!/bin/bash
# After session_chain3.sh: RL with every go-on decision counted as an action.
set -x
PY=.venv/bin/python
while pgrep -f session_chain3.sh > /dev/null; do sleep 10; done
date
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_stopall --max_steps 600 --eval_every 50 --lr 2e-5 --stop_actions all > runs/rl_stopall.log 2>&1
$PY evaluate.py --ckpt out/rl_stopall --method colar_rl_stopall --c 5 --out results/rl.json
date
