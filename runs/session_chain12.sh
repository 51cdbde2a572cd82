#!/bin/bash
# Replaces session_chain11.sh after its first step (the ablations, left running): then the quick demo (timed), then
# the rest of the GSM8K demo's test evaluation, which may be cut short at the session's end (records merge as made).
cd /work/fresh_run
while pgrep -f "bin/python demo.py" > /dev/null; do sleep 10; done
date
.venv/bin/python demo.py --quick true > demo_quick.log 2>&1
date
.venv/bin/python demo.py --task gsm8k > demo_gsm8k_eval.log 2>&1
date
