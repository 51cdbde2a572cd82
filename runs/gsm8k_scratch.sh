#!/usr/bin/env bash
# The whole pipeline on GSM8K, trained from scratch on a CPU: GSM8K (train less GSM8K-Aug's 500 validation questions:
# 6,973 problems) and GSM8K-Aug's validation and test files in the GSM8K-Aug format, GPT-2's BPE reduced to the ids the
# text uses (13,561), the demo's 4-layer model (2.53M parameters), then CoT (400 steps of 32), No-CoT (400), CoLaR (800
# steps from the CoT model), RL at c = 5 (60 steps) and the test evaluation (1,319 questions) into
# out/gsm8k/results/gsm8k_demo.json, .md and .png, beside the committed reference run's results/gsm8k_demo.*.
#
#   bash runs/gsm8k_scratch.sh                           # downloads the three source files once, into data/gsm8k/raw
#   COLAR_DATA=/path/to/folder bash runs/gsm8k_scratch.sh   # offline: a folder with gsm8k/ and gsm8k_aug/ in it
#
# On a 2-core CPU the training takes about 24 minutes before RL (CoT 6.0, No-CoT 4.7, CoLaR 13.3) and the evaluation
# longer: sampled decoding over 5 seeds costs 4 to 7 minutes per row (EXPERIMENTS.md). Resumable: run it again.
# Expect the floor, 1-4% for every method: a from-scratch model on 7k problems learns the format, not the mathematics.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`

$PY demo.py --task gsm8k "$@"
