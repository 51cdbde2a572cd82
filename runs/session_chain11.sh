#!/bin/bash
# Fourth session, in the fresh clone (/work/fresh_run, a clone of b290dd4): the runs the last session's chain did not
# reach. Each demo call resumes: finished stages and evaluations are skipped.
cd /work/fresh_run
date
.venv/bin/python demo.py --ablations true > demo_ablations.log 2>&1
date
.venv/bin/python demo.py --task gsm8k > demo_gsm8k_eval.log 2>&1
date
.venv/bin/python demo.py --quick true > demo_quick.log 2>&1
date
