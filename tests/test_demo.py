"""The demo pipeline end to end at toy size: every stage runs once, and a second run skips every one of them."""
import json
import os
from dataclasses import replace

import pytest

import demo
from common import UserError
from data import synthetic


def test_demo_runs_every_stage_then_skips_them(tmp_path, capsys):
    data = str(tmp_path / "data")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=300, n_val=20, n_test=10))
    results = str(tmp_path / "results" / "demo.json")
    cfg = demo.DemoConfig(data_dir=data, out_dir=str(tmp_path / "out"), results=results, max_steps=2, colar_steps=2,
                          rl_steps=1, rl_eval_n=4, n_test=6, seeds="0,1", device="cpu")
    text = demo.main(cfg)
    with open(results) as f:
        records = json.load(f)
    got = {(r["method"], r["c"], r["decode"]) for r in records}
    speeds = [("cot", 1), ("nocot", 0), ("colar_text", 1)] + [(m, c) for m in ("colar", "colar_rl") for c in range(1, 6)]
    assert got == {(m, c, d) for m, c in speeds for d in ("greedy", "sampled")}
    assert all(r["n"] == 6 and r["split"] == "test" for r in records)
    assert all(r["seeds"] == ([0, 1] if r["decode"] == "sampled" else []) for r in records)
    rl = [r for r in records if r["method"] == "colar_rl"]
    assert {os.path.dirname(r["checkpoint"]) for r in rl} == {str(tmp_path / "out" / "colar_rl")}
    assert "| CoLaR + RL | 5 |" in text and "| No-CoT | 0 |" in text
    with open(str(tmp_path / "results" / "demo.md")) as f:
        assert f.read().startswith(text.splitlines()[0])
    capsys.readouterr()

    assert demo.main(cfg) == text  # the second run: nothing trained or evaluated again, the same table
    out = capsys.readouterr().out
    assert out.count("already trained") == 4 and out.count("skipped") == 1 + 4 + 4  # data, training, evaluation
    with open(results) as f:
        assert json.load(f) == records

    demo.main(replace(cfg, n_test=4))  # other settings of the evaluation: evaluated again, training skipped
    out = capsys.readouterr().out
    assert out.count("already trained") == 4 and "evaluation of cot (" in out
    with open(results) as f:
        assert {r["n"] for r in json.load(f)} == {4}


def test_demo_presets():
    quick = demo.resolve(demo.DemoConfig(quick=True))
    assert (quick.out_dir, quick.results, quick.data_dir) == ("out/quick", "results/demo_quick.json", "data/synth_quick")
    assert quick.colar_steps < demo.DemoConfig.colar_steps and quick.steps_max < demo.DemoConfig.steps_max
    g = demo.resolve(demo.DemoConfig(task="gsm8k"))
    assert (g.data_dir, g.tokenizer, g.out_dir, g.results) == ("data/gsm8k", "gpt2", "out/gsm8k", "results/gsm8k_demo.json")
    mine = demo.resolve(demo.DemoConfig(task="gsm8k", batch_size=16, results="r.json"))  # flags given win
    assert (mine.batch_size, mine.results, mine.max_steps) == (16, "r.json", demo.GSM8K["max_steps"])
    for bad in (dict(task="mnist"), dict(rl_c=6), dict(task="gsm8k", quick=True)):
        with pytest.raises(UserError):
            demo.resolve(demo.DemoConfig(**bad))
