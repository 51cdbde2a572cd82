#!/bin/bash
# In the fresh clone, after the GSM8K demo started by session_chain9.sh: the quick demo (timed, on a quiet machine),
# then the ablations and the unseen-speed model (demo.py --ablations true; resumable, may continue next session).
cd /work/fresh_run
while pgrep -f "bin/python demo.py" > /dev/null; do sleep 10; done
date
.venv/bin/python demo.py --quick true > demo_quick.log 2>&1
date
.venv/bin/python demo.py --ablations true > demo_ablations.log 2>&1
date
