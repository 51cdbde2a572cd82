#!/bin/bash
# This session's measurements, one training at a time. From the repo root:
#   nohup bash runs/session_chain.sh > runs/session_chain.log 2>&1 &
set -x
PY=.venv/bin/python
date
# issue 3: CoLaR from scratch, 3,000 steps (compare: out/colar_w10, the same 3,000 steps from a CoT model)
$PY train_sft.py --mode colar --out_dir out/colar_scratch --max_steps 3000 --lr 1e-3 --eval_every 500 --eval_n 200 > runs/colar_scratch.log 2>&1
$PY evaluate.py --ckpt out/colar_scratch --method colar_scratch --c 1,2,3,4,5 --decode greedy --out results/experiments.json
date
# issue 3: tokenizations on the no-modulus task (numbers 0..99, 4-6 steps of + and -)
[ -f data/synth_nomod/train.txt ] || $PY -m data.synthetic --mod 0 --ops +- --operand_max 20 --max_value 99 --steps_min 4 --steps_max 6 --out data/synth_nomod
for kind in char number gpt2; do
  $PY train_sft.py --data_dir data/synth_nomod --tokenizer $kind --out_dir out/nomod_${kind}_cot > runs/nomod_${kind}_cot.log 2>&1
  $PY train_sft.py --mode colar --data_dir data/synth_nomod --init_from out/nomod_${kind}_cot --out_dir out/nomod_${kind}_colar --max_steps 2000 --lr 1e-3 --eval_every 500 --eval_n 200 > runs/nomod_${kind}_colar.log 2>&1
  $PY evaluate.py --ckpt out/nomod_${kind}_cot --method cot_${kind} --decode greedy --out results/tokenizers.json
  $PY evaluate.py --ckpt out/nomod_${kind}_colar --method colar_${kind} --c 1,2,3,4,5 --decode greedy --out results/tokenizers.json
  date
done
# issue 4: RL at c = 5 from the 3,000-step demo CoLaR model (out/colar_3000demo), and the w/o-average ablation
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_main --max_steps 600 --eval_every 50 --lr 2e-5 > runs/rl_main.log 2>&1
$PY train_rl.py --init_from out/colar_3000demo --c 5 --out_dir out/rl_noavg --max_steps 600 --eval_every 50 --lr 2e-5 --length_average false > runs/rl_noavg.log 2>&1
for run in colar_3000demo:colar_sft rl_main:colar_rl rl_noavg:colar_rl_noavg; do
  $PY evaluate.py --ckpt out/${run%%:*} --method ${run##*:} --c 1,2,3,4,5 --out results/rl.json
done
date
