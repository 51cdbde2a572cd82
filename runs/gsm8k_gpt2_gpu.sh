#!/usr/bin/env bash
# GPT-2 small (124M, Hugging Face's weights) on GSM8K-Aug's ~385k training problems, on one GPU or several: CoT SFT
# from GPT-2, CoLaR SFT from that CoT model, RL at c = 5, and the test evaluation of each (1,319 questions). The
# setting of the literature's GSM8K numbers (GPT-2 small: CoT 42.9%, No-CoT 16.5%).
#
#   bash runs/gsm8k_gpt2_gpu.sh             # one GPU: 32 sequences per step
#   NPROC=8 bash runs/gsm8k_gpt2_gpu.sh     # 8 GPUs on one machine (torchrun, nccl): 4 per GPU, the same 32 per step
#
# Needs a CUDA build of torch, `pip install -e ".[hf]"` (transformers, to load GPT-2's weights), and the network once:
# GPT-2's weights and BPE, and GSM8K-Aug's training file (or AUG_TRAIN=/path/to/train.txt; GSM8K's own files are read
# from COLAR_DATA when set). Not run yet: the steps and learning rates are a starting point, not tuned. An estimate,
# not a measurement: tens of minutes per SFT stage on an H100 (EXPERIMENTS.md); RL's rollouts were not estimated.
# Rerun it after an interruption: each run folder it finds is resumed (a finished one ends at once), each
# recorded evaluation left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ] && [ ! -f .venv/installed ]; then make .venv/installed; fi  # the venv of `make test`
NPROC=${NPROC:-1}
DATA=data/gsm8k_aug
BATCH=32                                   # sequences per optimizer step, whatever the number of GPUs
if [ "$NPROC" -gt 1 ]; then
  RUN="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC"
else
  RUN=$PY
fi
SPLIT="--batch_size $((BATCH / NPROC)) --total_batch_size $BATCH"

train() {  # train OUT_DIR COMMAND...: a new run, or the one OUT_DIR holds resumed (a finished one ends at once)
  local out=$1; shift
  if [ -f "$out/latest" ]; then "$@" --resume true; else "$@"; fi
}

# data/gsm8k_aug/{train,val,test}.txt: GSM8K-Aug's train file less any val or test question, GSM8K-Aug's
# validation and test files
[ -f $DATA/train.txt ] || $PY -m data.gsm8k --out $DATA --aug_train "${AUG_TRAIN:-download}"

# CoT from GPT-2 (GPT-2's full vocabulary plus our special tokens, block_size 1,024), then CoLaR from the CoT model
train out/gpt2_cot $RUN train_sft.py --data_dir $DATA --tokenizer gpt2 --init_from gpt2 --mode cot --out_dir out/gpt2_cot \
    $SPLIT --max_steps 20000 --lr 1e-4 --warmup_steps 500 --eval_every 2000
train out/gpt2_colar $RUN train_sft.py --data_dir $DATA --mode colar --init_from out/gpt2_cot --out_dir out/gpt2_colar \
    $SPLIT --max_steps 20000 --lr 1e-4 --eval_every 2000
# RL at c = 5 with a small learning rate (the model is 150 times the demo's)
train out/gpt2_colar_rl $RUN train_rl.py --init_from out/gpt2_colar --data_dir $DATA --c 5 --out_dir out/gpt2_colar_rl --lr 1e-6

# the test split: CoT, CoLaR at every speed (and writing text), CoLaR + RL
RESULTS=results/gpt2_gsm8k.json
$PY evaluate.py --skip_done true --ckpt out/gpt2_cot --method cot --out $RESULTS
$PY evaluate.py --skip_done true --ckpt out/gpt2_colar --method colar --c 1,2,3,4,5 --text_cot true --out $RESULTS
$PY evaluate.py --skip_done true --ckpt out/gpt2_colar_rl --method colar_rl --c 1,2,3,4,5 --out $RESULTS
$PY report.py --results $RESULTS --md results/gpt2_gsm8k.md --png results/gpt2_gsm8k.png
