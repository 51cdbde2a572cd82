#!/usr/bin/env bash
# The paper's ablations and the unseen-speed test, beside the full demo. demo.py first runs (or skips, when done) the
# demo's own stages, about 36 minutes, then trains each ablation as the demo's CoLaR stage (6,000 steps from out/cot)
# with one switch and evaluates it at c = 2 and 5:
#   DL   --deterministic true     a deterministic latent head
#   MP   --pool mean              mean pooling instead of sum / sqrt(n)
#   NLL  --latent_loss nll        the Gaussian NLL instead of soft-MSE
#   OC   --chunk_labels false     no CE labels at the compressed positions
# and a model trained on c in {1, 3, 5} only (--c_values 1,3,5), evaluated at every c (2 and 4 unseen).
#
#   bash runs/ablations.sh
#
# 123.6 minutes beyond the demo on a 2-core CPU (results/logs/demo_ablations.txt). Resumable: run it again after an
# interruption. Adds its rows to out/results/demo.json, .md and .png; EXPERIMENTS.md discusses them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`

$PY demo.py --ablations true "$@"
