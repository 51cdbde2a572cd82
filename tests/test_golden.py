"""Regression: a few training steps of every mode give the losses and weights they gave when the fixture was recorded.

The fixture tests/golden_losses.json holds, for tiny runs of CoT, No-CoT, CoLaR (c drawn from 1..5 each step) and RL
(from that CoLaR run), every step's losses and a checksum of the final weights. A change that means to leave the
computation alone (a refactor) must reproduce them to float tolerance; a change that means to alter it re-records
them on purpose:  .venv/bin/python tests/test_golden.py
"""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_rl  # noqa: E402
import train_sft  # noqa: E402
from data import synthetic  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_losses.json")


def checksum(modules):
    """Two numbers that move with any weight: the sum and the sum of squares of every parameter and buffer."""
    ts = [t.double() for m in modules if m is not None for t in m.state_dict().values() if t.is_floating_point()]
    return [float(sum(t.sum() for t in ts)), float(sum(t.pow(2).sum() for t in ts))]


def parity_reward(answer, reference, n_latents=0, length_penalty=0.0, max_latents=64, finished=True):
    """A stand-in reward with signal for an untrained model: 1 for an answer of even length."""
    return float(len(answer) % 2 == 0)


def record(root):
    data = os.path.join(root, "synth")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=128, n_val=8, n_test=8, steps_min=2, steps_max=3))
    tiny = dict(data_dir=data, n_layer=1, n_head=2, n_embd=32, batch_size=8, warmup_steps=2, eval_every=3, eval_n=4,
                log_every=100, device="cpu")
    out = {}
    for mode in ("cot", "nocot"):
        run = train_sft.main(train_sft.TrainConfig(mode=mode, out_dir=os.path.join(root, mode), max_steps=6, **tiny))
        out[mode] = {"history": run["history"], "weights": checksum([run["model"]])}
    run = train_sft.main(train_sft.TrainConfig(mode="colar", init_from=os.path.join(root, "cot"), max_latents=6,
                                               out_dir=os.path.join(root, "colar"), max_steps=10, **tiny))
    out["colar"] = {"history": run["history"], "weights": checksum([run["model"], run["head"]])}
    real_reward, train_rl.reward = train_rl.reward, parity_reward
    try:
        run = train_rl.main(train_rl.RLConfig(init_from=os.path.join(root, "colar"), data_dir=data, c=2, group=4,
                                              questions=4, minibatch=8, max_latents=6, max_answer_tokens=4,
                                              max_steps=3, eval_every=3, eval_n=4, log_every=100, lr=1e-3,
                                              out_dir=os.path.join(root, "rl"), device="cpu"))
    finally:
        train_rl.reward = real_reward
    out["rl"] = {"history": run["history"], "weights": checksum([run["model"], run["head"]])}
    return out


def test_training_steps_reproduce_the_recorded_losses(tmp_path):
    with open(FIXTURE) as f:
        want = json.load(f)
    got = json.loads(json.dumps(record(str(tmp_path))))  # tuples -> lists, as in the file
    for mode in want:
        assert len(got[mode]["history"]) == len(want[mode]["history"]), mode
        for g, w in zip(got[mode]["history"], want[mode]["history"]):
            assert g == pytest.approx(w, rel=1e-4, abs=1e-6), mode
        assert got[mode]["weights"] == pytest.approx(want[mode]["weights"], rel=1e-5), mode
    assert any(abs(h[3]) > 0 for h in got["rl"]["history"]), "the RL steps must carry a gradient signal"


if __name__ == "__main__":
    import tempfile
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        result = record(d)
    with open(FIXTURE, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v["history"] for k, v in result.items()}, indent=None)[:2000])
