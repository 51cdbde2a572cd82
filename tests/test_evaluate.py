"""evaluate.py's record keeping: --skip_done leaves out what --out already holds for the same checkpoint bytes,
split, seeds and settings (questions, latent cap, sampling), and evaluates everything else.

Run: .venv/bin/python -m pytest tests/test_evaluate.py
"""
import json
import shutil

import pytest

import evaluate
from common import UserError


def test_evaluate_skip_done(tiny_runs, tmp_path, monkeypatch, capsys):
    out_json, done = str(tmp_path / "r.json"), []
    real = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **kw: done.append(a[4:6]) or real(*a, **kw))
    args = dict(ckpt=tiny_runs["colar"], split="test", n=3, seeds="0,1", max_latents=4, out=out_json, device="cpu",
                skip_done=True)
    first = evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert done == [(1, "greedy"), (2, "greedy")]
    # the greedy records are there: only the sampled ones are evaluated, and the returned list holds all four
    recs = evaluate.main(evaluate.EvalConfig(**args, decode="greedy,sampled"))
    assert done[2:] == [(1, "sampled"), (2, "sampled")] and "already in" in capsys.readouterr().out
    assert recs[:2] == first
    assert len(recs) == 4 and len(evaluate.read_records(out_json, "--out")) == 4
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy,sampled"))
    assert len(done) == 4  # everything present: nothing evaluated
    # another question count, other seeds, or another checkpoint's bytes: evaluated again
    evaluate.main(evaluate.EvalConfig(**{**args, "n": 2}, decode="greedy"))
    evaluate.main(evaluate.EvalConfig(**{**args, "seeds": "0"}, decode="sampled"))
    assert done[4:] == [(1, "greedy"), (2, "greedy"), (1, "sampled"), (2, "sampled")]
    # another latent cap: both decodings again; another temperature: only the sampled ones
    evaluate.main(evaluate.EvalConfig(**{**args, "max_latents": 3}, decode="greedy"))
    evaluate.main(evaluate.EvalConfig(**{**args, "max_latents": 3, "temperature": 0.5}, decode="greedy,sampled"))
    assert done[8:] == [(1, "greedy"), (2, "greedy"), (1, "sampled"), (2, "sampled")]
    # the same split name and size in another folder, one answer changed: other questions, evaluated again
    other = tmp_path / "other"
    shutil.copytree(tiny_runs["data"], other)
    lines = (other / "test.txt").read_text().splitlines(keepends=True)
    q, rest = lines[0].split("||", 1)
    lines[0] = q + "||" + rest.replace("####", "#### 1", 1)
    (other / "test.txt").write_text("".join(lines))
    evaluate.main(evaluate.EvalConfig(**{**args, "data_dir": str(other)}, decode="greedy"))
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))  # back: its record was replaced, so again too
    assert done[12:] == [(1, "greedy"), (2, "greedy")] * 2
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert len(done) == 16
    records = evaluate.read_records(out_json, "--out")
    for r in records:
        r["checkpoint_sha256"] = "0" * 64
    with open(out_json, "w") as f:
        json.dump(records, f)
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert len(done) == 18
    records = evaluate.read_records(out_json, "--out")  # this checkpoint's again, now without settings
    for r in records:
        r.pop("settings")
    with open(out_json, "w") as f:
        json.dump(records, f)
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert len(done) == 20  # evaluated again
    with pytest.raises(UserError, match="needs --out"):
        evaluate.main(evaluate.EvalConfig(**{**args, "out": ""}, decode="greedy"))
