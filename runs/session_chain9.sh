#!/bin/bash
# In the fresh clone, after its `make demo` (session_chain8.sh): the GSM8K pipeline, then the ablations and the
# unseen-speed model (demo.py --ablations true; resumable, may continue in the next session).
set -x
cd /work/fresh_run
while pgrep -f "bin/python demo.py" > /dev/null; do sleep 10; done
date
( time .venv/bin/python demo.py --task gsm8k ) > demo_gsm8k.log 2>&1
date
( time .venv/bin/python demo.py --ablations true ) > demo_ablations.log 2>&1
date
