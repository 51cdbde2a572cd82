"""The demo pipeline end to end at toy size: every stage runs once (each training stage a `python ...` subprocess, as a
user's, the evaluations in this process), a second run skips every one of them, the baselines join, and other
evaluation settings evaluate again without training again (these later runs execute the demo's commands in this
process); and the presets.

Run: .venv/bin/python -m pytest tests/test_demo.py
"""
import hashlib
import importlib
import json
import os
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest

import checkpoint
import demo
from common import UserError, given_fields, parse_config, run_cli
from conftest import make_tiny_data


def stage_lines(out, word):
    """The demo's own `== stage: ...` lines that end in `word` (a subprocess's lines never start with `==`; report's
    `plot skipped` line, printed without matplotlib, is not one of them)."""
    return [s for s in out.splitlines() if s.startswith("== ") and s.endswith(word)]


def commands(out):
    """The scripts of the `$ python <script> ...` lines the demo printed before running each."""
    return [s.split()[2] for s in out.splitlines() if s.startswith("$ python ")]


CONFIGS = {"train_sft": "TrainConfig", "train_rl": "RLConfig", "evaluate": "EvalConfig", "report": "ReportConfig"}


def in_process(cmd, env=None):
    """subprocess.run for the demo's commands (`python <script>.py --flag=value ...`), run in this process as the
    script's __main__ runs it: the same work, without a new process's ~3 s of `import torch`."""
    name = os.path.basename(cmd[1])[:-3]
    module = importlib.import_module(name)
    try:
        run_cli(module.main, parse_config(getattr(module, CONFIGS[name]), cmd[2:]))
        rc = 0
    except SystemExit as e:
        rc = e.code
    finally:
        checkpoint.release_all()
    return SimpleNamespace(returncode=rc)


def test_demo_runs_every_stage_then_skips_them(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stages' subprocesses are tiny: one thread each, like this one
    real_run = demo.subprocess.run  # training as a user's subprocess; evaluation and report here (no start-up)
    monkeypatch.setattr(demo, "subprocess", SimpleNamespace(
        run=lambda cmd, env: (real_run if os.path.basename(cmd[1]).startswith("train") else in_process)(cmd, env=env)))
    data = make_tiny_data(str(tmp_path / "data"), n_train=300, n_val=4, n_test=10)
    results = str(tmp_path / "out" / "results" / "demo.json")  # by default, under out_dir
    reference = tmp_path / "reference.json"  # none yet: the report has no reference column
    cfg = demo.DemoConfig(data_dir=data, steps_min=2, steps_max=3, out_dir=str(tmp_path / "out"),
                          reference=str(reference), max_steps=2, max_latents=6, colar_steps=2, rl_steps=1,
                          rl_eval_n=4, n_test=4, seeds="0,1", device="cpu", train_seed=7)
    text = demo.main(cfg)
    out = capfd.readouterr().out  # the demo's lines and its subprocesses' (written to the real stdout)
    assert commands(out) == ["train_sft.py"] * 3 + ["train_rl.py"] + ["evaluate.py"] * 4 + ["report.py"]
    assert [s.split().count("--seed=7") for s in out.splitlines() if s.startswith("$ python train")] == [1] * 4
    assert out.count("done: 2 steps") == 3 and out.count("done: 1 steps") == 1  # the training subprocesses' logs
    assert len(stage_lines(out, "skipped")) == 1  # only the data, made above
    assert "--reference" not in out and "reference, sampled" not in out
    with open(results) as f:
        records = json.load(f)
    got = {(r["method"], r["c"], r["decode"]) for r in records}
    speeds = [("cot", 1), ("nocot", 0), ("colar_text", 1)]
    speeds += [(m, c) for m in ("colar", "colar_rl") for c in range(1, 6)]
    assert got == {(m, c, d) for m, c in speeds for d in ("greedy", "sampled")}
    assert all(r["n"] == 4 and r["split"] == "test" for r in records)
    assert all(r["seeds"] == ([0, 1] if r["decode"] == "sampled" else []) for r in records)
    rl = [r for r in records if r["method"] == "colar_rl"]
    assert {os.path.dirname(r["checkpoint"]) for r in rl} == {str(tmp_path / "out" / "colar_rl")}
    assert "| CoLaR + RL | 5 |" in text and "| No-CoT | 0 |" in text
    with open(str(tmp_path / "out" / "results" / "demo.md")) as f:
        assert f.read().startswith(text.splitlines()[0])

    # from here on every command runs in this process (the first run above trained as a user's would)
    monkeypatch.setattr(demo, "subprocess", SimpleNamespace(run=in_process))
    assert demo.main(cfg) == text  # the second run: nothing trained or evaluated again, the same table
    out = capfd.readouterr().out
    assert len(stage_lines(out, "skipped")) == 1 + 4  # data, training
    assert sum("already trained" in s for s in stage_lines(out, "skipped")) == 4
    assert commands(out) == ["evaluate.py"] * 4 + ["report.py"]  # each finds its records there: the table again
    assert out.count(f"already in {results}, skipped") == len(records) and "records merged" not in out
    assert "did not evaluate" not in out  # every record is of a model this run evaluated
    with open(results) as f:
        assert json.load(f) == records

    # --baselines: the four baselines trained from the CoT model and evaluated; the rest skipped
    text = demo.main(replace(cfg, baselines=True, baseline_steps=2))
    out = capfd.readouterr().out
    assert commands(out) == ["train_sft.py"] * 4 + ["evaluate.py"] * 8 + ["report.py"]  # 4 find their records
    assert out.count("records merged") == 4
    trained = [s.split() for s in out.splitlines() if s.startswith("$ python train_sft.py")]
    assert [[a for a in t if a.startswith("--mode=")] for t in trained] == [
        ["--mode=coconut"], ["--mode=pause"], ["--mode=icot"], ["--mode=distill"]]
    assert all(f"--init_from={tmp_path / 'out' / 'cot'}" in t for t in trained)
    for label in ("| Coconut | – |", "| Pause as thought | – |", "| iCoT | – |", "| Distill (CODI) | – |"):
        assert label in text
    with open(results) as f:
        records = json.load(f)

    # other settings of the evaluation: evaluated again, training skipped (the commands only recorded)
    # and a reference file now exists: the report is given it, unless it is this run's own results file
    ran = []
    monkeypatch.setattr(demo, "run", ran.append)
    reference.write_text(json.dumps(records))
    demo.main(replace(cfg, n_test=2))
    out = capfd.readouterr().out
    assert out.count("already trained") == 4 and "evaluation of cot (" in out
    # the baselines' records are still in the file, but this run (without --baselines) did not evaluate them
    note = next(s for s in out.splitlines() if s.startswith("note:"))
    assert "coconut c = 0, distill c = 0, icot c = 1, pause c = 0;" in note and "colar" not in note
    assert [args[0] for args in ran] == ["evaluate.py"] * 4 + ["report.py"]  # (without --baselines: 4 methods)
    assert all("--n=2" in args for args in ran[:4])
    assert ran[-1][1:] == [f"--results={results}", f"--md={results[:-5]}.md", f"--png={results[:-5]}.png",
                           f"--reference={reference}"]
    ran.clear()
    demo.main(replace(cfg, n_test=2, reference=results))
    assert ran[-1][0] == "report.py" and not any(a.startswith("--reference") for a in ran[-1])


def test_demo_presets():
    full = demo.resolve(demo.DemoConfig())  # a run's records under its out_dir, the committed ones its reference
    assert (full.results, full.reference) == ("out/results/demo.json", "results/demo.json")
    assert demo.resolve(demo.DemoConfig(out_dir="elsewhere")).results == "elsewhere/results/demo.json"
    quick = demo.resolve(demo.DemoConfig(quick=True))
    assert (quick.out_dir, quick.results, quick.reference, quick.data_dir) == (
        "out/quick", "out/quick/results/demo_quick.json", "results/demo_quick.json", "data/synth_quick")
    assert quick.colar_steps < demo.DemoConfig.colar_steps and quick.steps_max < demo.DemoConfig.steps_max
    assert demo.resolve(demo.DemoConfig(quick=True, results="r.json")).results == "r_quick.json"
    g = demo.resolve(demo.DemoConfig(task="gsm8k"))
    assert (g.data_dir, g.tokenizer, g.out_dir, g.results, g.reference) == (
        "data/gsm8k", "gpt2", "out/gsm8k", "out/gsm8k/results/gsm8k_demo.json", "results/gsm8k_demo.json")
    mine = demo.resolve(demo.DemoConfig(task="gsm8k", batch_size=16, results="r.json"))  # flags given win
    assert (mine.batch_size, mine.results, mine.max_steps) == (16, "r.json", demo.GSM8K["max_steps"])
    m = demo.resolve(demo.DemoConfig(task="mult5"))
    assert (m.data_dir, m.tokenizer, m.out_dir, m.results, m.reference, m.max_steps, m.stop_at) == (
        "data/mult5", "place", "out/mult5", "out/mult5/results/mult5.json", "results/mult5.json", 8000, 4000)
    m = demo.resolve(demo.DemoConfig(task="mult4", mult_format="product"))  # another chain: its own folders
    assert (m.data_dir, m.out_dir, m.results, m.reference) == (
        "data/mult4_product", "out/mult4_product", "out/mult4_product/results/mult4_product.json",
        "results/mult4_product.json")
    for bad in (dict(task="mnist"), dict(rl_c=6), dict(task="gsm8k", quick=True), dict(task="mult4", quick=True),
                dict(task="mult4", mult_format="words")):
        with pytest.raises(UserError):
            demo.resolve(demo.DemoConfig(**bad))


def test_a_run_stopped_at_stop_at_is_finished_until_asked_to_go_further(monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "run", ran.append)
    monkeypatch.setattr(demo, "read_pointer", lambda out_dir, name: "ckpt_000004.pt")
    monkeypatch.setattr(demo, "load_checkpoint",  # a run at step 4 of a schedule of 8 stopped at 4
                        lambda out_dir, name, mmap: {"step": 4, "config": dict(out_dir="o", max_steps=8, stop_at=4)})
    demo.train_stage("cot", "train_sft.py", dict(out_dir="o", max_steps=8, stop_at=4))
    demo.train_stage("cot", "train_sft.py", dict(out_dir="o", max_steps=8, stop_at=6))
    demo.train_stage("cot", "train_sft.py", dict(out_dir="o", max_steps=8))
    assert ran == [["train_sft.py", "--out_dir=o", "--max_steps=8", "--stop_at=6", "--resume=true"],
                   ["train_sft.py", "--out_dir=o", "--max_steps=8", "--resume=true"]]  # the first: finished, skipped


def test_a_run_found_with_other_settings_is_refused(monkeypatch, tmp_path):
    """A finished run is skipped only when every flag matches (folders however named); one to resume may go further;
    an RL run is compared with its own settings."""
    ran = []
    monkeypatch.setattr(demo, "run", ran.append)
    monkeypatch.setattr(demo, "read_pointer", lambda out_dir, name: "ckpt_000008.pt")
    saved = dict(out_dir="o", data_dir=str(tmp_path), max_steps=8, seed=1337, n_layer=4, device="cpu")
    monkeypatch.setattr(demo, "load_checkpoint", lambda out_dir, name, mmap: {"step": 8, "config": saved})
    same = dict(saved, data_dir=os.path.join(str(tmp_path), "."), device="auto")
    demo.train_stage("cot", "train_sft.py", same)
    for change in (dict(seed=7), dict(n_layer=8), dict(max_steps=4), dict(data_dir=str(tmp_path / "other")),
                   dict(lr=0.001)):  # (lr: a flag the saved run does not have)
        with pytest.raises(UserError, match=f"o holds a cot run trained with other settings: {next(iter(change))}="):
            demo.train_stage("cot", "train_sft.py", {**same, **change})
    demo.train_stage("cot", "train_sft.py", {**same, "max_steps": 12})  # further: resumed
    assert ran == [["train_sft.py", "--out_dir=o", f"--data_dir={same['data_dir']}", "--max_steps=12", "--seed=1337",
                    "--n_layer=4", "--device=auto", "--resume=true"]]
    with pytest.raises(UserError, match="seed=1337 \\(now 8\\)"):
        demo.train_stage("cot", "train_sft.py", {**same, "max_steps": 12, "seed": 8})
    # a CoLaR stage asked to go further: its eval_every, derived from its steps, changes with them
    ran.clear()
    monkeypatch.setattr(demo, "load_checkpoint", lambda out_dir, name, mmap: {"step": 8, "config": dict(
        saved, eval_every=2)})
    demo.train_stage("colar", "train_sft.py", {**same, "max_steps": 12, "eval_every": 3})
    assert ran[0][-1] == "--resume=true" and "--eval_every=3" in ran[0]
    with pytest.raises(UserError, match="eval_every=2 \\(now 3\\)"):  # a finished run must match it
        demo.train_stage("colar", "train_sft.py", {**same, "eval_every": 3})
    monkeypatch.setattr(demo, "load_checkpoint", lambda out_dir, name, mmap: {"step": 8, "config": saved,
                                                                         "rl_config": dict(saved, c=2)})
    demo.train_stage("colar_rl", "train_rl.py", dict(same, c=2))
    with pytest.raises(UserError, match="c=2 \\(now 5\\)"):
        demo.train_stage("colar_rl", "train_rl.py", dict(same, c=5))


def test_a_run_whose_starting_model_has_changed_is_refused(monkeypatch, tmp_path):
    """CoT trained further (a larger --stop_at) after CoLaR was trained from it: the finished CoLaR run was skipped
    and reported beside the new CoT. Now refused, naming both; a run saved without the record of its start (an older
    run) is taken as it is."""
    cot = tmp_path / "cot"
    cot.mkdir()

    def cot_best(step, data):
        (cot / f"ckpt_{step:06d}.pt").write_bytes(data)
        for pointer in ("best", "latest"):
            (cot / pointer).write_text(f"ckpt_{step:06d}.pt\n")

    cot_best(4, b"the CoT model at step 4")
    start = {"path": str(cot / "ckpt_000004.pt"), "step": 4,
             "sha256": hashlib.sha256(b"the CoT model at step 4").hexdigest()}
    run_flags = dict(out_dir="o", init_from=str(cot), max_steps=8)
    saved = {"step": 8, "config": run_flags, "started_from": start}
    ran, real = [], demo.read_pointer
    monkeypatch.setattr(demo, "run", ran.append)
    monkeypatch.setattr(demo, "read_pointer", lambda d, name: "ckpt_000008.pt" if d == "o" else real(d, name))
    monkeypatch.setattr(demo, "load_checkpoint", lambda out_dir, name, mmap: saved)
    demo.train_stage("colar", "train_sft.py", run_flags)  # its start is CoT's best: skipped
    cot_best(6, b"the CoT model at step 6")
    with pytest.raises(UserError, match=re.escape(f"o was trained from {cot}/ckpt_000004.pt (step 4), but {cot}'s "
                                                  f"model has changed since (its best is now ckpt_000006.pt)")):
        demo.train_stage("colar", "train_sft.py", run_flags)
    with pytest.raises(UserError, match="has changed since"):  # one to resume, too
        demo.train_stage("colar", "train_sft.py", {**run_flags, "max_steps": 12})
    saved.pop("started_from")
    demo.train_stage("colar", "train_sft.py", run_flags)
    assert ran == []


def test_every_run_already_there_is_checked_before_the_first_stage_trains(tmp_path, monkeypatch):
    """A later stage's folder holding a run of other settings was refused only when its turn came, after the stages
    before it had trained (hours, with the ladder)."""
    data = make_tiny_data(str(tmp_path / "data"), n_train=20, n_val=4, n_test=4)
    out = tmp_path / "out"
    cfg = demo.DemoConfig(data_dir=data, steps_min=2, steps_max=3, out_dir=str(out), reference="", max_steps=2,
                          colar_steps=2, rl_steps=1, device="cpu")
    ran, real = [], demo.read_pointer
    monkeypatch.setattr(demo, "run", ran.append)
    rl = str(out / "colar_rl")
    monkeypatch.setattr(demo, "read_pointer", lambda d, name: "ckpt_000001.pt" if d == rl else real(d, name))
    monkeypatch.setattr(demo, "load_checkpoint", lambda d, name, mmap: {"step": 1, "config": {}, "rl_config": dict(
        init_from=str(out / "colar"), c=2, max_steps=1)})
    with pytest.raises(UserError, match=f"{rl} holds a colar_rl run trained with other settings: .*c=2 \\(now 5\\)"):
        demo.main(cfg)
    assert ran == []  # no stage trained


def test_runs_built_on_a_stage_that_trains_further_are_refused_before_it_trains(monkeypatch):
    """A finished demo run again with a larger --stop_at: CoT trains on, and CoLaR and RL, trained from the CoT and
    CoLaR of before, were found stale only when their turn came, one at a time (here none had started_from, as an
    older run: refused all the same, named together, before anything trains)."""
    steps = {"cot": 4, "colar": 8, "rl": 2}
    monkeypatch.setattr(demo, "read_pointer", lambda d, name: "ckpt.pt")
    saved = {"cot": dict(out_dir="cot", max_steps=8, stop_at=4), "colar": dict(out_dir="colar", max_steps=8,
             init_from="cot"), "rl": dict(out_dir="rl", max_steps=2, init_from="colar")}
    monkeypatch.setattr(demo, "load_checkpoint", lambda d, name, mmap: {"step": steps[d], "config": saved[d]})
    plan = [(d, "train_sft.py", dict(saved[d])) for d in ("cot", "colar", "rl")]
    demo.check_plan(plan)  # CoT finished at its stop_at: nothing trains, nothing stale
    plan[0] = ("cot", "train_sft.py", dict(out_dir="cot", max_steps=8, stop_at=6))
    with pytest.raises(UserError, match="^colar were trained from runs this demo trains"):
        demo.check_plan(plan)  # (RL's start, colar, is finished: only colar is stale)
    steps["colar"] = 6  # colar unfinished too: RL is stale as well
    with pytest.raises(UserError, match="^colar, rl were trained from runs this demo trains \\(further\\) now"):
        demo.check_plan(plan)


def test_data_cut_short_is_made_again(tmp_path, monkeypatch):
    """A data folder with a split missing (the data stage was interrupted) is not taken for finished data."""
    data = make_tiny_data(str(tmp_path / "data"), n_train=20, n_val=2, n_test=2)
    os.remove(os.path.join(data, "test.txt"))
    ran = []
    monkeypatch.setattr(demo, "train_stage", lambda *args: None)
    monkeypatch.setattr(demo, "eval_stage", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "run", ran.append)
    (tmp_path / "out" / "results").mkdir(parents=True)
    (tmp_path / "out" / "results" / "demo.md").write_text("| table |\n")
    demo.main(demo.DemoConfig(data_dir=data, out_dir=str(tmp_path / "out"), device="cpu"))
    assert ran[0][:2] == ["-m", "data.synthetic"] and ran[1][0] == "report.py"


def test_stop_at_and_the_model_size_reach_the_models_trained_from_scratch_only(tmp_path, monkeypatch):
    data = make_tiny_data(str(tmp_path / "data"), n_train=20, n_val=2, n_test=2)
    trained = {}
    monkeypatch.setattr(demo, "train_stage", lambda name, script, run_flags: trained.update({name: run_flags}))
    monkeypatch.setattr(demo, "eval_stage", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "run", lambda args: None)  # the report: its table is written below instead
    (tmp_path / "out" / "results").mkdir(parents=True)
    (tmp_path / "out" / "results" / "demo.md").write_text("| table |\n")
    demo.main(demo.DemoConfig(data_dir=data, steps_min=2, steps_max=3, out_dir=str(tmp_path / "out"), max_steps=8,
                              stop_at=4, device="cpu", n_layer=2, n_head=2, n_embd=32))
    assert {name: flags.get("stop_at") for name, flags in trained.items()} == {
        "cot": 4, "nocot": 4, "colar": None, "colar_rl": None}
    shape = lambda flags: tuple(flags.get(k) for k in ("n_layer", "n_head", "n_embd"))  # noqa: E731
    assert {name: shape(flags) for name, flags in trained.items()} == {  # CoLaR and RL take CoT's shape
        "cot": (2, 2, 32), "nocot": (2, 2, 32), "colar": (None,) * 3, "colar_rl": (None,) * 3}


def test_colar_stages_train_one_speed_at_a_time(tmp_path, capfd, monkeypatch):
    """--colar_stages: each stage at its speed alone from the best model of the one before (the first from CoT's), a
    speed's last stage evaluated at that speed only, RL from the model of --rl_c and evaluated at it; run again, every
    stage is skipped."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(demo, "subprocess", SimpleNamespace(run=in_process))
    data = make_tiny_data(str(tmp_path / "data"), n_train=100, n_val=4, n_test=4)
    out = tmp_path / "out"
    cfg = demo.DemoConfig(data_dir=data, steps_min=2, steps_max=3, out_dir=str(out), reference="", max_steps=2,
                          max_latents=6, colar_steps=2, colar_stages="2:2 3:2 3:3", rl_c=3, rl_steps=1, rl_lr=5e-6,
                          rl_sigma_min=0.03, rl_eval_n=4, n_test=4, seeds="0", device="cpu", n_layer=1, n_head=2,
                          n_embd=16)
    demo.main(cfg)
    printed = capfd.readouterr().out
    trained = [dict(a[2:].split("=", 1) for a in s.split()[3:])  # each training command's flags, in order
               for s in printed.splitlines() if s.startswith("$ python train")]
    ladder = [(t["out_dir"], t["init_from"], t["c_values"], t["max_steps"]) for t in trained[3:6]]
    assert ladder == [(str(out / "colar_c2_2"), str(out / "cot"), "2", "2"),
                      (str(out / "colar_c3_2"), str(out / "colar_c2_2"), "3", "2"),
                      (str(out / "colar_c3_3"), str(out / "colar_c3_2"), "3", "3")]
    rl = trained[6]  # RL: from c = 3's last stage, with the RL settings given
    assert (rl["init_from"], rl["c"], float(rl["lr"]), float(rl["sigma_min"])) == (
        str(out / "colar_c3_3"), "3", 5e-6, 0.03)
    with open(out / "results" / "demo.json") as f:
        records = json.load(f)
    evaluated = {(r["method"], r["c"], os.path.basename(os.path.dirname(r["checkpoint"]))) for r in records}
    assert {(m, c, d) for m, c, d in evaluated if m in ("colar_ladder", "colar_rl")} == {
        ("colar_ladder", 2, "colar_c2_2"), ("colar_ladder", 3, "colar_c3_3"), ("colar_rl", 3, "colar_rl")}
    for run, start in (("colar_c2_2", "cot"), ("colar_c3_3", "colar_c3_2"), ("colar_rl", "colar_c3_3")):
        began = checkpoint.load_checkpoint(str(out / run), "latest")["started_from"]  # what each run started from
        best = checkpoint.resolve_checkpoint(str(out / start))
        assert (began["path"], began["sha256"]) == (best, checkpoint.file_sha256(best))
    assert checkpoint.load_checkpoint(str(out / "cot"), "latest")["started_from"] is None  # from scratch
    times = next(s for s in printed.splitlines() if s.startswith("the run's time over every resume"))
    names = ["cot", "nocot", "colar", "colar_c2_2", "colar_c3_2", "colar_c3_3", "colar_rl"]
    assert all(re.search(rf"\b{n} \d+\.\d\b", times) for n in names) and "?" not in times
    demo.main(cfg)
    again = capfd.readouterr().out
    assert sum("already trained" in s for s in stage_lines(again, "skipped")) == 7
    assert times in again.splitlines()  # a run that trains nothing still tells the minutes its checkpoints record


@pytest.mark.parametrize("given, message", [
    (dict(colar_stages="2:100 3-100", rl_c=2), "'3-100', not speed:steps"),
    (dict(colar_stages="6:100", rl_c=5), "'6:100', not speed:steps with a speed of 1..5"),
    (dict(colar_stages="2:0", rl_c=2), "'2:0', not speed:steps"),
    (dict(colar_stages="2:100 3:50 2:100", rl_c=2), "'2:100' twice"),
    (dict(colar_stages="2:100 3:50", rl_c=5), "--rl_c 5 is not a speed of --colar_stages"),
    (dict(rl_lr=0.0), "--rl_lr must be positive"), (dict(rl_sigma_min=-0.1), "--rl_sigma_min must be >= 0"),
    (dict(steps_min=9), "need 1 <= steps_min <= steps_max, got 9, 8")])
def test_bad_one_speed_stages_or_rl_settings_are_refused_before_any_stage(tmp_path, monkeypatch, given, message):
    ran = []
    monkeypatch.setattr(demo, "run", ran.append)
    monkeypatch.setattr(demo, "train_stage", lambda *args: ran.append(args))
    with pytest.raises(UserError, match=re.escape(message)):
        demo.main(demo.DemoConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), device="cpu",
                                  **given))
    assert ran == []


@pytest.mark.parametrize("given, ladder, rl", [
    (dict(), ["colar_c2_14000", "colar_c3_6000", "colar_c3_10000", "colar_c4_6000", "colar_c4_10000", "colar_c5_10000",
              "colar_c5_8000"], ("colar_c5_8000", 5)),
    (dict(colar_stages="none", rl_c=2), [], ("colar", 2))])
def test_multiplication_trains_one_speed_at_a_time_unless_told_none(tmp_path, monkeypatch, given, ladder, rl):
    """--task mult4's stages: beside the every-speed model, the ladder of one-speed stages (14,000 steps at c = 2, two
    stages at each of c = 3, 4, 5, the first from CoT's model) and RL at c = 5 from its last stage, at lr 5e-6 with
    a sigma floor of 0.03; --colar_stages none leaves the paper's recipe alone, RL from the every-speed model."""
    trained, evaluated = [], []
    monkeypatch.setattr(demo, "train_stage", lambda name, script, run_flags: trained.append((name, run_flags)))
    monkeypatch.setattr(demo, "run", lambda args: evaluated.append(args) if args[0] == "evaluate.py" else None)
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "mult4.md").write_text("table\n")  # report.py's, which the demo prints at the end
    demo.main(demo.DemoConfig(task="mult4", data_dir=str(tmp_path / "data"), out_dir=str(out), device="cpu", **given))
    names = [name for name, _ in trained]
    assert names == ["cot", "nocot", "colar"] + ladder + ["colar_rl"]
    flags_of = dict(trained)
    steps = [(flags_of[n]["c_values"], flags_of[n]["max_steps"], os.path.basename(flags_of[n]["init_from"]))
             for n in ladder]
    if ladder:
        assert steps == [("2", 14000, "cot"), ("3", 6000, "colar_c2_14000"), ("3", 10000, "colar_c3_6000"),
                         ("4", 6000, "colar_c3_10000"), ("4", 10000, "colar_c4_6000"),
                         ("5", 10000, "colar_c4_10000"), ("5", 8000, "colar_c5_10000")]
    r = flags_of["colar_rl"]
    assert (os.path.basename(r["init_from"]), r["c"], r["lr"], r["sigma_min"], r["max_steps"]) == (*rl, 5e-6, 0.03, 400)
    ladder_evals = [(a[1], a[-1]) for a in evaluated if "--method=colar_ladder" in a]
    assert ladder_evals == ([(f"--ckpt={out / n}", f"--c={c}") for n, c in [
        ("colar_c2_14000", 2), ("colar_c3_10000", 3), ("colar_c4_10000", 4), ("colar_c5_8000", 5)]] if ladder else [])


def test_ablations_of_a_ladder_switch_its_first_and_last_speed(tmp_path, monkeypatch):
    """--ablations with --colar_stages: each switch trains the ladder's first speed's stages from CoT's model and its
    last speed's from the plain ladder's model before them, evaluated at those speeds; the unseen-speed model is
    trained at every one of its speeds at once, from CoT, as without a ladder."""
    trained, evaluated = [], []
    monkeypatch.setattr(demo, "train_stage", lambda name, script, run_flags: trained.append((name, run_flags)))
    monkeypatch.setattr(demo, "run", lambda args: evaluated.append(args) if args[0] == "evaluate.py" else None)
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "demo.md").write_text("table\n")
    demo.main(demo.DemoConfig(data_dir=str(tmp_path / "data"), out_dir=str(out), device="cpu", ablations=True,
                              colar_stages="2:40 3:20 4:20 4:30", rl_c=4))
    runs = {name: flags for name, flags in trained}
    got = [(n, os.path.basename(f["init_from"]), f["c_values"], f.get("pool"), f.get("chunk_labels"))
           for n, f in trained if n.startswith(("colar_mp", "colar_oc"))]
    assert got == [("colar_mp_c2_40", "cot", "2", "mean", None), ("colar_mp_c4_20", "colar_c3_20", "4", "mean", None),
                   ("colar_mp_c4_30", "colar_mp_c4_20", "4", "mean", None),
                   ("colar_oc_c2_40", "cot", "2", None, False), ("colar_oc_c4_20", "colar_c3_20", "4", None, False),
                   ("colar_oc_c4_30", "colar_oc_c4_20", "4", None, False)]
    assert {n for n in runs if n.startswith(("colar_dl", "colar_nll"))} == {
        "colar_dl_c2_40", "colar_dl_c4_20", "colar_dl_c4_30", "colar_nll_c2_40", "colar_nll_c4_20", "colar_nll_c4_30"}
    assert (runs["colar_135"]["init_from"], runs["colar_135"]["c_values"]) == (str(out / "cot"), "1,3,5")
    dl = [(a[1], a[-1]) for a in evaluated if "--method=colar_dl" in a]
    assert dl == [(f"--ckpt={out / 'colar_dl_c2_40'}", "--c=2"), (f"--ckpt={out / 'colar_dl_c4_30'}", "--c=4")]


def test_records_of_models_the_run_did_not_evaluate_are_named(tmp_path):
    """A record whose checkpoint is not the best of any folder the run evaluated (here: colar at c = 2 of a model
    since trained again, and a method whose folder is gone) is named; the records of the folders' best are not."""
    hashes = {}
    for name, data in (("cot", b"cot weights"), ("colar", b"colar weights")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt_000002.pt").write_bytes(data)
        (tmp_path / name / "best").write_text("ckpt_000002.pt\n")
        hashes[name] = hashlib.sha256(data).hexdigest()
    record = lambda m, c, sha: dict(method=m, c=c, decode="greedy", split="test",  # noqa: E731
                                    checkpoint_sha256=sha)
    results = tmp_path / "r.json"
    results.write_text(json.dumps([record("cot", 1, hashes["cot"]), record("colar", 1, hashes["colar"]),
                                   record("colar", 2, hashlib.sha256(b"older colar").hexdigest()),
                                   record("pause", 0, hashlib.sha256(b"pause").hexdigest())]))
    _, others = demo.split_records(str(results), [str(tmp_path / "cot"), str(tmp_path / "colar")])
    assert demo.other_records(others) == [("colar", 2), ("pause", 0)]


def test_the_runs_time_sums_each_stage_from_its_checkpoint_and_the_evaluation_from_its_records(tmp_path, monkeypatch):
    """The demo's last line: each training stage's minutes as its latest checkpoint records them (90 s and 30 s
    here; ? for a checkpoint without them and for a stage not trained), the evaluation's from the records of the
    models this run evaluated (45 + 15; not the 600 s of a model it did not), and the sum: (90 + 30 + 60) / 60 = 3.0
    minutes."""
    seconds = {"cot": 90.0, "nocot": 30.0, "colar": None}
    for name in seconds:
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt_000002.pt").write_bytes(name.encode())
        (tmp_path / name / "latest").write_text("ckpt_000002.pt\n")
    monkeypatch.setattr(demo, "load_checkpoint", lambda out_dir, name, mmap: {
        "seconds": seconds[os.path.basename(out_dir)]} if seconds[os.path.basename(out_dir)] else {})
    record = lambda m, d, sha, s: dict(method=m, c=1, decode=d, split="test", checkpoint_sha256=sha,  # noqa: E731
                                       seconds=s)
    results = tmp_path / "r.json"
    results.write_text(json.dumps([record("cot", "greedy", hashlib.sha256(b"cot").hexdigest(), 45.0),
                                   record("cot", "sampled", hashlib.sha256(b"cot").hexdigest(), 15.0),
                                   record("pause", "greedy", hashlib.sha256(b"pause").hexdigest(), 600.0)]))
    stages = [(name, "train_sft.py", {"out_dir": str(tmp_path / name)})
              for name in ("cot", "nocot", "colar", "colar_rl")]
    evaluated = [str(tmp_path / name) for name in ("cot", "nocot", "colar")]
    assert demo.run_times(stages, demo.split_records(str(results), evaluated)[0]) == (
        "the run's time over every resume (training from its checkpoints, evaluation from its records): cot 1.5, "
        "nocot 0.5, colar ?, colar_rl ? min of training, 1.0 min of evaluation; 3.0 min in all")


def test_a_flag_given_at_its_default_value_is_kept_over_the_preset(tmp_path):
    """The paper's recipe on multiplication with RL at the old settings, which equal the flags' defaults
    (--rl_lr 2e-5, --rl_sigma_min 0.1): given on the command line, or in --config, they win over the task's preset
    (5e-6, 0.03), as a value that differs from the default does."""
    argv = ["--task", "mult4", "--colar_stages", "none", "--rl_c", "2", "--rl_lr", "2e-5", "--rl_sigma_min", "0.1",
            "--rl_steps", "200"]
    cfg = demo.resolve(parse_config(demo.DemoConfig, argv), given_fields(demo.DemoConfig, argv))
    assert (cfg.colar_stages, cfg.rl_c, cfg.rl_lr, cfg.rl_sigma_min, cfg.rl_steps) == ("none", 2, 2e-5, 0.1, 200)
    assert (cfg.tokenizer, cfg.max_latents) == ("place", 96)  # the rest of the preset stays
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": "mult4", "rl_lr": 2e-5}))
    argv = ["--config", str(path)]
    cfg = demo.resolve(parse_config(demo.DemoConfig, argv), given_fields(demo.DemoConfig, argv))
    assert (cfg.rl_lr, cfg.rl_sigma_min) == (2e-5, 0.03)
