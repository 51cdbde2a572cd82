#!/bin/bash
# A fresh clone: CI (.ci/run = make test, creating .venv), then the README's main job (make demo) timed, then the
# ablations and the unseen-speed model in the same clone (python demo.py --ablations true).
set -x
cd /work/fresh_run
date
( time .ci/run ) > ci.log 2>&1
date
( time make demo ) > demo.log 2>&1
date
( time .venv/bin/python demo.py --ablations true ) > demo_ablations.log 2>&1
date
