"""evaluate.py's record keeping: --skip_done leaves out what --out already holds for the same checkpoint bytes,
split, seeds and settings (questions, latent cap, sampling), and evaluates everything else; a record of another
checkpoint replaced is named. Its checks of the sampling settings, and the t quantile of its intervals.

Run: .venv/bin/python -m pytest tests/test_evaluate.py
"""
import hashlib
import json
import os
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
    # another batch size: only the sampled ones (one generator runs through the batches: the draws depend on them)
    evaluate.main(evaluate.EvalConfig(**{**args, "max_latents": 3, "temperature": 0.5, "batch_size": 2},
                                      decode="greedy,sampled"))
    assert done[12:] == [(1, "sampled"), (2, "sampled")]
    # the same split name and size in another folder, one answer changed: other questions, evaluated again
    other = tmp_path / "other"
    shutil.copytree(tiny_runs["data"], other)
    lines = (other / "test.txt").read_text().splitlines(keepends=True)
    q, rest = lines[0].split("||", 1)
    lines[0] = q + "||" + rest.replace("####", "#### 1", 1)
    (other / "test.txt").write_text("".join(lines))
    evaluate.main(evaluate.EvalConfig(**{**args, "data_dir": str(other)}, decode="greedy"))
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))  # back: its record was replaced, so again too
    assert done[14:] == [(1, "greedy"), (2, "greedy")] * 2
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert len(done) == 18
    records = evaluate.read_records(out_json, "--out")
    for r in records:
        r["checkpoint_sha256"] = "0" * 64
    with open(out_json, "w") as f:
        json.dump(records, f)
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert len(done) == 20
    records = evaluate.read_records(out_json, "--out")  # this checkpoint's again, now without settings
    for r in records:
        r.pop("settings")
    with open(out_json, "w") as f:
        json.dump(records, f)
    evaluate.main(evaluate.EvalConfig(**args, decode="greedy"))
    assert len(done) == 22  # evaluated again
    with pytest.raises(UserError, match="needs --out"):
        evaluate.main(evaluate.EvalConfig(**{**args, "out": ""}, decode="greedy"))


def test_evaluate_says_which_record_it_replaced(tiny_runs, tmp_path, capsys):
    """One method name, two models: the second's records replace the first's, and it says so, naming the file they
    came from; re-evaluating the same checkpoint replaces silently, on other questions not."""
    out_json = str(tmp_path / "r.json")
    args = dict(split="test", n=2, decode="greedy", method="m", out=out_json, device="cpu")
    evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["cot"], **args))
    evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["cot"], **args))
    assert "replaced a record" not in capsys.readouterr().out
    evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], c="1", **args))
    replaced = [s for s in capsys.readouterr().out.splitlines() if s.startswith("replaced a record of ")]
    assert len(replaced) == 1 and tiny_runs["cot"] in replaced[0]
    [record] = evaluate.read_records(out_json, "--out")
    assert tiny_runs["colar"] in record["checkpoint"]
    evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], c="1", **{**args, "n": 3}))  # other questions
    replaced = [s for s in capsys.readouterr().out.splitlines() if s.startswith("replaced a record")]
    assert replaced == ["replaced a record of other questions or settings: " + evaluate.format_record(record)]


def test_each_record_is_written_as_soon_as_it_is_measured(tiny_runs, tmp_path):
    """An evaluation stopped at its second record (Ctrl-C, out of memory) keeps the first in --out, for --skip_done
    to leave out when it is run again (the records were written only once every evaluation had finished)."""
    out_json, real, calls = str(tmp_path / "r.json"), evaluate.evaluate, []

    def second_one_stops(*a, **kw):
        calls.append(a[4:6])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    args = dict(ckpt=tiny_runs["colar"], split="test", n=2, c="1,2", decode="greedy", out=out_json, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "evaluate", second_one_stops)
        with pytest.raises(KeyboardInterrupt):
            evaluate.main(evaluate.EvalConfig(**args))
    assert [(r["c"], r["decode"]) for r in evaluate.read_records(out_json, "--out")] == [(1, "greedy")]
    calls.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "evaluate", lambda *a, **kw: calls.append(a[4:6]) or real(*a, **kw))
        evaluate.main(evaluate.EvalConfig(**args, skip_done=True))
    assert calls == [(2, "greedy")]


def test_the_record_hashes_the_weights_it_measured_even_if_the_file_is_replaced(tiny_runs, tmp_path, monkeypatch):
    """A checkpoint file replaced (atomically, as every save here) just after it is loaded: the record's SHA-256
    is still of the bytes loaded (hashing the path again after loading named the new file)."""
    import checkpoint
    path, other = tmp_path / "model.pt", tmp_path / "other.pt"
    shutil.copy(checkpoint.resolve_checkpoint(tiny_runs["colar"], "best"), path)
    shutil.copy(checkpoint.resolve_checkpoint(tiny_runs["cot"], "best"), other)
    loaded = hashlib.sha256(path.read_bytes()).hexdigest()
    real_load = checkpoint.torch.load

    def load_then_replace(*a, **kw):
        out = real_load(*a, **kw)
        if other.exists():
            os.replace(other, path)
        return out
    monkeypatch.setattr(checkpoint.torch, "load", load_then_replace)
    out_json = str(tmp_path / "r.json")
    evaluate.main(evaluate.EvalConfig(ckpt=str(path), split="test", n=2, c="1", decode="greedy", out=out_json,
                                      device="cpu"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() != loaded  # the file did change under it
    assert [r["checkpoint_sha256"] for r in evaluate.read_records(out_json, "--out")] == [loaded]


def test_a_row_is_written_with_both_its_decodings(tiny_runs, tmp_path, monkeypatch):
    """Stopped between a row's greedy and sampled evaluations, the file keeps neither new record of that row: its old
    sampled record from another checkpoint would otherwise sit beside a new greedy one (report.py refuses the row)."""
    out_json, real, calls = str(tmp_path / "r.json"), evaluate.evaluate, []

    def stops_at(n):
        def evaluate_until(*a, **kw):
            calls.append(a[4:6])
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **kw)
        return evaluate_until

    args = dict(ckpt=tiny_runs["colar"], split="test", n=2, c="1,2", seeds="0", out=out_json, device="cpu")
    for n, kept in ((2, []), (3, [(1, "greedy"), (1, "sampled")])):
        calls.clear()
        monkeypatch.setattr(evaluate, "evaluate", stops_at(n))
        with pytest.raises(KeyboardInterrupt):
            evaluate.main(evaluate.EvalConfig(**args))
        assert calls == [(1, "greedy"), (1, "sampled"), (2, "greedy")][:n]
        assert [(r["c"], r["decode"]) for r in evaluate.read_records(out_json, "--out")] == kept


@pytest.mark.parametrize("flags, repeated", [(dict(seeds="0,1,0"), "--seeds lists 0"), (dict(c="2,1,2"), "--c lists 2"),
                                             (dict(decode="sampled,greedy,sampled"), "--decode lists sampled")])
def test_a_seed_speed_or_decoding_given_twice_is_refused(tiny_runs, flags, repeated):
    """Five sampled passes with seeds 0,0,0,0,0 are one pass five times: an interval of 0 that means nothing."""
    with pytest.raises(UserError, match=f"^{repeated} more than once$"):
        evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, device="cpu", **flags))
    if "seeds" in flags:  # greedy decoding does not use the seeds
        evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, device="cpu", decode="greedy",
                                          **flags))


def test_a_question_longer_than_the_context_is_refused_before_any_decoding(tiny_runs, tmp_path, monkeypatch):
    """The context check covered one batch at a time, inside decoding: a long question in a later batch was refused
    only after the batches before it were decoded. Now every question, at every speed, before the first."""
    with open(f"{tiny_runs['data']}/test.txt") as f:
        lines = f.read().splitlines()[:3]
    long_q = "+".join(["1"] * 200)
    (tmp_path / "test.txt").write_text("\n".join(lines + [f"{long_q}||<<1+1=2>> #### 2"]) + "\n")
    import sample
    decoded, real = [], sample.generate_latent
    monkeypatch.setattr(sample, "generate_latent", lambda *a, **kw: decoded.append(len(a[3])) or real(*a, **kw))
    with pytest.raises(UserError, match="^the prompt is 4.. tokens but the model's context is "):
        evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], data_dir=str(tmp_path), split="test", c="1,2",
                                          decode="greedy", batch_size=2, device="cpu"))
    assert decoded == []  # (the first batch of 2 questions was decoded before)


@pytest.mark.parametrize("flag", [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5),
                                  dict(latent_temperature=-1.0)])
def test_sampled_decoding_refuses_settings_that_would_not_sample(tiny_runs, flag):
    """A temperature of 0 would decode greedily under a `sampled` label; top-p outside (0, 1] keeps no token."""
    cfg = evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, device="cpu", **flag)
    with pytest.raises(UserError, match="sampled decoding needs --temperature > 0"):
        evaluate.main(cfg)
    evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, device="cpu", decode="greedy",
                                      **flag))  # greedy decoding does not use them


def test_t975_against_published_quantiles():
    """Student's t 97.5% quantiles from standard tables, beyond evaluate's own table (df > 10)."""
    for df, exact in ((11, 2.200985), (12, 2.178813), (15, 2.131450), (20, 2.085963), (30, 2.042272),
                      (60, 2.000298), (120, 1.979930)):
        assert abs(evaluate.t975(df) - exact) < 2e-4, df
    assert evaluate.t975(4) == 2.776
