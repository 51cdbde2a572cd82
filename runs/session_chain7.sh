#!/bin/bash
# After session_chain6.sh: the main RL run on the check task again with the committed code (rollouts seeded by
# shard: the earlier run, out/check_rl_rng0, drew from one generator); then the benchmark and the quick demo on the
# quiet machine; then the demo with the RL stage and the ablations (resumes out/cot, out/nocot, out/colar).
set -x
PY=.venv/bin/python
while pgrep -f session_chain6.sh > /dev/null; do sleep 10; done
date
$PY train_rl.py --init_from out/check_colar --data_dir data/synth_check --c 5 --out_dir out/check_rl --max_steps 600 --eval_every 50 > runs/check_rl.log 2>&1
$PY evaluate.py --ckpt out/check_rl --method check_rl --c 1,2,3,4,5 --out results/rl_check.json > runs/check_rl_eval.log 2>&1
$PY evaluate.py --ckpt out/check_colar --method check_sft --c 5 --out results/rl_check.json > runs/check_sft_eval5.log 2>&1
date
# the "w/o average" ablation at a 5x larger learning rate, with and without length averaging
$PY train_rl.py --init_from out/check_colar --data_dir data/synth_check --c 5 --out_dir out/check_rl_lr1e4 --max_steps 600 --eval_every 50 --lr 1e-4 > runs/check_rl_lr1e4.log 2>&1
$PY evaluate.py --ckpt out/check_rl_lr1e4 --method check_rl_lr1e4 --c 5 --out results/rl_check.json > runs/check_rl_lr1e4_eval.log 2>&1
$PY train_rl.py --init_from out/check_colar --data_dir data/synth_check --c 5 --out_dir out/check_rl_lr1e4_noavg --max_steps 600 --eval_every 50 --lr 1e-4 --length_average false > runs/check_rl_lr1e4_noavg.log 2>&1
$PY evaluate.py --ckpt out/check_rl_lr1e4_noavg --method check_rl_lr1e4_noavg --c 5 --out results/rl_check.json > runs/check_rl_lr1e4_noavg_eval.log 2>&1
date
$PY bench.py --out results/bench.json > runs/bench.log 2>&1
date
$PY demo.py --quick true > runs/demo_quick.log 2>&1
date
$PY demo.py --ablations true > runs/demo_ablations.log 2>&1
date
