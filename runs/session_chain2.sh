#!/bin/bash
# After session_chain.sh: No-CoT on the no-modulus task, two more RL variants, then the demo's CoLaR recipe with a
# second seed. From the repo root: nohup bash runs/session_chain2.sh > runs/session_chain2.log 2>&1 &
set -x
PY=.venv/bin/python
while pgrep -f session_chain.sh > /dev/null; do sleep 10; done
date
$PY train_sft.py --mode nocot --data_dir data/synth_nomod --out_dir out/nomod_char_nocot > runs/nomod_char_nocot.log 2>&1
$PY evaluate.py --ckpt out/nomod_char_nocot --method nocot_char --decode greedy --out results/tokenizers.json
date
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_len --max_steps 600 --eval_every 50 --lr 2e-5 --length_penalty 0.5 > runs/rl_len.log 2>&1
$PY evaluate.py --ckpt out/rl_len --method colar_rl_len --c 1,2,3,4,5 --out results/rl.json
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_sig3 --max_steps 600 --eval_every 50 --lr 2e-5 --sigma_min 0.3 > runs/rl_sig3.log 2>&1
$PY evaluate.py --ckpt out/rl_sig3 --method colar_rl_sig3 --c 1,2,3,4,5 --out results/rl.json
date
$PY train_sft.py --mode colar --init_from out/cot --out_dir out/colar_seed2 --max_steps 6000 --lr 1e-3 --eval_every 1000 --eval_n 200 --seed 2 > runs/colar_seed2.log 2>&1
$PY evaluate.py --ckpt out/colar_seed2 --method colar_seed2 --c 1,2,3,4,5 --out results/experiments.json
date
