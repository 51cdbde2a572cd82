#!/bin/bash
# Issue 3's remaining measurements, one training at a time. Run from the repo root: nohup bash runs/issue3_chain.sh > runs/issue3_chain.log 2>&1 &
set -x
PY=.venv/bin/python
date
# 1. the demo's CoLaR recipe with a second seed (same CoT start, out/cot)
$PY train_sft.py --mode colar --init_from out/cot --out_dir out/colar_seed2 --max_steps 6000 --lr 1e-3 --eval_every 1000 --eval_n 200 --seed 2 > runs/colar_seed2.log 2>&1
$PY evaluate.py --ckpt out/colar_seed2 --method colar_seed2 --c 1,2,3,4,5 --out results/experiments.json
date
# 2. CoLaR from scratch, 3,000 steps (compare: out/colar_w10, the same 3,000 steps from a CoT model)
$PY train_sft.py --mode colar --out_dir out/colar_scratch --max_steps 3000 --lr 1e-3 --eval_every 500 --eval_n 200 > runs/colar_scratch.log 2>&1
$PY evaluate.py --ckpt out/colar_scratch --method colar_scratch --c 1,2,3,4,5 --decode greedy --out results/experiments.json
date
# 3. tokenizations on the no-modulus task (numbers 0..99, 4-6 steps of + and -)
[ -f data/synth_nomod/train.txt ] || $PY -m data.synthetic --mod 0 --ops +- --operand_max 20 --max_value 99 --steps_min 4 --steps_max 6 --out data/synth_nomod
for kind in char number gpt2; do
  $PY train_sft.py --data_dir data/synth_nomod --tokenizer $kind --out_dir out/nomod_${kind}_cot > runs/nomod_${kind}_cot.log 2>&1
  $PY train_sft.py --mode colar --data_dir data/synth_nomod --init_from out/nomod_${kind}_cot --out_dir out/nomod_${kind}_colar --max_steps 3000 --lr 1e-3 --eval_every 1000 --eval_n 200 > runs/nomod_${kind}_colar.log 2>&1
  $PY evaluate.py --ckpt out/nomod_${kind}_cot --method cot_${kind} --decode greedy --out results/tokenizers.json
  $PY evaluate.py --ckpt out/nomod_${kind}_colar --method colar_${kind} --c 1,2,3,4,5 --decode greedy --out results/tokenizers.json
  date
done
