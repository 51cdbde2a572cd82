#!/usr/bin/env bash
# The whole pipeline, small, to see its shape in minutes: a 3-4 step version of the synthetic task, CoT (600 steps),
# No-CoT, CoLaR (800 steps from the CoT model), RL at c = 5 (20 steps), then 200 test questions at c = 1..5, greedy
# and sampled with 3 seeds. Writes out/quick/ (the runs) and out/quick/results/demo_quick.json, .md (the table), .png
# (the plot), beside the committed reference run's results/demo_quick.*.
#
#   bash runs/quick_demo.sh
#
# 5.6 minutes on a 2-core CPU (results/logs/demo_quick_fresh_clone.txt), 1.9 on one H100
# (results/logs/h100/demo_quick.log). Run it again and the finished stages are skipped. Extra flags go to demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`

$PY demo.py --quick true "$@"
