#!/bin/bash
# Replaces session_chain12.sh: after the ablations (running), the quick demo (timed), then the GSM8K demo's models on
# the test split: greedy first at every c (a few minutes), then sampled over 5 seeds as far as the session allows.
cd /work/fresh_run
while pgrep -f "bin/python demo.py" > /dev/null; do sleep 10; done
date
.venv/bin/python demo.py --quick true > demo_quick.log 2>&1
date
E=".venv/bin/python evaluate.py --data_dir data/gsm8k --split test --out results/gsm8k_demo.json"
$E --ckpt out/gsm8k/colar --method colar --c 1,2,3,4,5 --text_cot true --decode greedy > gsm8k_eval.log 2>&1
$E --ckpt out/gsm8k/colar_rl --method colar_rl --c 1,2,3,4,5 --decode greedy >> gsm8k_eval.log 2>&1
date
$E --ckpt out/gsm8k/colar --method colar --c 5,2 --decode sampled --seeds 0,1,2,3,4 >> gsm8k_eval.log 2>&1
$E --ckpt out/gsm8k/colar_rl --method colar_rl --c 5 --decode sampled --seeds 0,1,2,3,4 >> gsm8k_eval.log 2>&1
date
