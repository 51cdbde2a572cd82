"""Inputs a command cannot use are refused at once, in one line: config-file values of the wrong type, a device this
torch cannot use, empty or misplaced data files, and outputs that could not be written or read back. Each case runs
the command as a user would (`python <script>.py ...` from the repository root) and expects exit status 2, one
`error:` line on stderr and no traceback; where a command has expensive work ahead (the demo's training stages, an
evaluation), also that none of it ran. Most cases run the command in this process, as its `__main__` does
(run_cli(main, parse_config(...))), which spares each the ~1.5 s of a new process's `import torch`; one case per
command family (training, evaluation, the demo) runs the real command line in a new process.

Run: .venv/bin/python -m pytest tests/test_faults_inputs.py
"""
import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from conftest import ROOT, tiny_train_cfg

import checkpoint
import demo
from common import UserError, parse_config, pick_device, run_cli
from data import synthetic
from data.format import DataError, check_split, read_split

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # each command starts, reads its inputs and stops: one thread is plenty
NO_MPS = not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())


CONFIGS = {"train_sft.py": "TrainConfig", "train_rl.py": "RLConfig", "evaluate.py": "EvalConfig",
           "sample.py": "SampleConfig", "report.py": "ReportConfig", "demo.py": "DemoConfig"}


def error_line(rc, err):
    """A refusal: exit status 2 and a single `error: ...` line on stderr, no traceback. Returns that line."""
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def refused_command(script, *args):
    """Run `python script args...` from the repository root, in a new process, and expect a refusal (error_line).
    Returns (that line, stdout, seconds taken)."""
    t0 = time.time()
    p = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    seconds = time.time() - t0
    return error_line(p.returncode, p.stderr), p.stdout, seconds


def refused(capsys, script, *args):
    """Run the command `python script args...` in this process, from the repository root, as the script's
    `__main__` runs it (run_cli(main, parse_config(Config, args))), then let go of any run folder as the process
    would at exit (checkpoint.release_all); expect a refusal (error_line). Returns (that line, stdout, seconds)."""
    module = importlib.import_module(script[:-3])
    capsys.readouterr()  # only this command's output below
    t0 = time.time()
    try:
        with contextlib.chdir(ROOT), pytest.raises(SystemExit) as e:
            run_cli(module.main, parse_config(getattr(module, CONFIGS[script]), [*map(str, args)]))
    finally:
        checkpoint.release_all()
    seconds = time.time() - t0
    out, err = capsys.readouterr()
    return error_line(e.value.code, err), out, seconds


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def nocot(tiny_data, tmp_path_factory):
    """A No-CoT run of one step on tiny_data."""
    import train_sft
    out = str(tmp_path_factory.mktemp("nocot") / "run")
    train_sft.main(tiny_train_cfg(tiny_data, out, mode="nocot", max_steps=1, eval_every=1, eval_n=1))
    return out


# --- values that bypass the flag parser -----------------------------------------------------------------------------
def test_config_file_values_are_checked_like_flags(tmp_path, capsys):
    """A config file's values take the field's type as the flags do: booleans as JSON booleans or the flag's words
    ("false" is false, not a true non-empty string), whole numbers for int fields, any number for float fields."""
    from train_sft import TrainConfig
    path = str(tmp_path / "c.json")

    def parse(values):
        write(path, json.dumps(values))
        return parse_config(TrainConfig, ["--config", path])

    cfg = parse({"resume": "false", "deterministic": "yes", "chunk_labels": False, "lr": 1, "batch_size": 8})
    assert (cfg.resume, cfg.deterministic, cfg.chunk_labels) == (False, True, False)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.batch_size == 8
    for field, value in [("resume", "maybe"), ("resume", 1), ("batch_size", 8.5), ("batch_size", True),
                         ("lr", "fast"), ("lr", False), ("out_dir", 5), ("mode", None)]:
        with pytest.raises(SystemExit) as e:
            parse({field: value})
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert field in err and path in err


def test_config_file_false_does_not_resume(tiny_runs, tmp_path):
    """{"resume": "false"} for a folder that holds a run is refused as a new run into it would be, not resumed. (The
    training commands' case run as a real command line, in a new process.)"""
    out = str(tmp_path / "cot")
    shutil.copytree(tiny_runs["cot"], out)
    config = write(str(tmp_path / "c.json"), json.dumps(
        {"data_dir": tiny_runs["data"], "out_dir": out, "n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 16,
         "max_steps": 4, "resume": "false", "device": "cpu"}))
    line, _, _ = refused_command("train_sft.py", "--config", config)
    assert "already holds checkpoints" in line


# --- a device this torch cannot use ---------------------------------------------------------------------------------
def test_unusable_devices_are_named():
    """Every kind of device this torch or this machine cannot run is refused by name, not left to fail later."""
    for name in ["cuda:99", "tpu", "xla", "meta"] + (["mps"] if NO_MPS else []) + (
            [] if torch.cuda.is_available() else ["cuda"]):
        with pytest.raises(UserError) as e:
            pick_device(name)
        assert name in str(e.value)


@pytest.mark.parametrize("script,device", [
    ("train_sft.py", "cuda:99"),
    pytest.param("evaluate.py", "mps", marks=pytest.mark.skipif(not NO_MPS, reason="MPS is available here")),
    ("demo.py", "cuda:99")])
def test_unusable_device(script, device, tiny_runs, tmp_path, capsys):
    """A training run, an evaluation (the error must not blame the checkpoint) and the demo (before its data stage)."""
    args = {"train_sft.py": ["--data_dir", tiny_runs["data"], "--out_dir", tmp_path / "out", "--max_steps", 1],
            "evaluate.py": ["--ckpt", tiny_runs["colar"], "--n", 1, "--decode", "greedy"],
            "demo.py": ["--data_dir", tiny_runs["data"], "--out_dir", tmp_path / "out",
                        "--results", tmp_path / "r.json", "--max_steps", 1, "--colar_steps", 1, "--rl_steps", 1]}
    line, _, _ = refused(capsys, script, *args[script], "--device", device)
    assert device.split(":")[0] in line and "checkpoint" not in line
    assert not os.path.exists(tmp_path / "out")


# --- empty or misplaced inputs --------------------------------------------------------------------------------------
def data_copy(tiny_data, tmp_path, **replace):
    """A copy of tiny_data in tmp_path/data with some files' texts replaced ({"val": ""}: an empty val.txt)."""
    out = str(tmp_path / "data")
    shutil.copytree(tiny_data, out)
    for split, text in replace.items():
        write(os.path.join(out, f"{split}.txt"), text)
    return out


def test_data_files_that_are_folders_and_folders_that_are_files(tiny_data, tmp_path):
    data = data_copy(tiny_data, tmp_path)
    os.remove(os.path.join(data, "val.txt"))
    os.makedirs(os.path.join(data, "val.txt"))
    with pytest.raises(DataError, match="^" + re.escape(f"{data}/val.txt is a folder, not a data file")):
        read_split(os.path.join(data, "val.txt"))
    with pytest.raises(DataError, match="^" + re.escape(f"{data}/train.txt is a file, not a data folder")):
        check_split(os.path.join(data, "train.txt", "train.txt"))  # --data_dir naming a file
    with pytest.raises(DataError, match="^" + re.escape(f"data folder not found: {data}/nope")):
        check_split(os.path.join(data, "nope", "train.txt"))


@pytest.mark.parametrize("case,expected", [
    ("empty val", "no validation examples in {data}/val.txt: model selection needs some"),
    ("data_dir is a file", "{data}/train.txt is a file, not a data folder")])
def test_train_sft_bad_data(case, expected, tiny_data, tmp_path, capsys):
    data = data_copy(tiny_data, tmp_path, **({"val": "\n"} if case == "empty val" else {}))
    if case == "data_dir is a file":
        data = os.path.join(data, "train.txt")
    line, _, _ = refused(capsys, "train_sft.py", "--data_dir", data, "--out_dir", tmp_path / "out", "--device", "cpu",
                         "--n_layer", 1, "--n_embd", 32, "--batch_size", 16, "--max_steps", 1)
    assert expected.format(data=os.path.join(str(tmp_path), "data")) in line
    assert not os.path.exists(tmp_path / "out")


def test_train_sft_rows_longer_than_the_context(tiny_runs, tmp_path, capsys):
    """A --block_size, or a starting model's context, too short for the longest training row: refused before the
    first step (it was an error from inside the model's forward), the row's length named."""
    common = ("--data_dir", tiny_runs["data"], "--device", "cpu", "--n_layer", 1, "--n_embd", 32, "--max_steps", 1)
    line, _, _ = refused(capsys, "train_sft.py", *common, "--out_dir", tmp_path / "a", "--block_size", 8)
    assert re.fullmatch(r"error: the longest training row needs \d+ positions, but the model's context is 8 "
                        r"\(--block_size\): .*", line)
    assert not os.path.exists(tmp_path / "a")
    long_question = "+".join(["1"] * 80)  # longer than the CoT model's context
    data = data_copy(tiny_runs["data"], tmp_path, train=f"{long_question}||<<1+1=2>> #### 2\n")
    line, _, _ = refused(capsys, "train_sft.py", "--data_dir", data, "--device", "cpu", "--max_steps", 1,
                         "--out_dir", tmp_path / "b", "--mode", "colar", "--init_from", tiny_runs["cot"])
    assert f"(--init_from {tiny_runs['cot']}'s)" in line


def test_train_sft_a_block_size_other_than_the_models_own_is_refused(tiny_runs, tmp_path, capsys):
    """Starting from a model, or resuming one, its context stays; a different --block_size was silently ignored."""
    own = checkpoint.load_checkpoint(tiny_runs["cot"])["model_config"]["block_size"]
    line, _, _ = refused(capsys, "train_sft.py", "--data_dir", tiny_runs["data"], "--device", "cpu", "--max_steps", 1,
                         "--out_dir", tmp_path / "a", "--mode", "colar", "--init_from", tiny_runs["cot"],
                         "--block_size", own + 64)
    assert line == (f"error: --block_size {own + 64}, but --init_from {tiny_runs['cot']} has a context of {own}: "
                    f"leave --block_size at 0 (the model's own)")
    assert not os.path.exists(tmp_path / "a")
    run = tmp_path / "cot"
    shutil.copytree(tiny_runs["cot"], run)
    before = sorted(os.listdir(run))
    line, _, _ = refused(capsys, "train_sft.py", "--data_dir", tiny_runs["data"], "--device", "cpu", "--n_layer", 1,
                         "--n_head", 2, "--n_embd", 32, "--batch_size", 16, "--max_steps", 8, "--out_dir", run,
                         "--resume", "true", "--block_size", 16)
    assert line.startswith(f"error: --block_size 16, but the run in {run} has a context of {own}:")
    assert sorted(os.listdir(run)) == before


def test_train_rl_empty_validation(tiny_runs, tmp_path, capsys):
    data = data_copy(tiny_runs["data"], tmp_path, val="")
    line, _, _ = refused(capsys, "train_rl.py", "--init_from", tiny_runs["colar"], "--data_dir", data,
                         "--out_dir", tmp_path / "out", "--device", "cpu", "--max_steps", 1)
    assert f"no validation examples in {data}/val.txt: model selection needs some" in line


@pytest.mark.parametrize("flag", ["weight_decay", "grad_clip", "keep_last", "stop_at"])
def test_train_rl_refuses_a_negative_setting(flag, tiny_runs, tmp_path, capsys):
    """As train_sft.py does (a negative weight decay went into AdamW's groups unchecked)."""
    line, _, _ = refused(capsys, "train_rl.py", "--init_from", tiny_runs["colar"], "--data_dir", tiny_runs["data"],
                         "--out_dir", tmp_path / "out", "--device", "cpu", f"--{flag}", -1)
    assert f"--{flag} must be >= 0, got -1" in line and not os.path.exists(tmp_path / "out")


def test_train_rl_question_longer_than_the_context(tiny_runs, tmp_path, capsys):
    """A prompt that alone fills the context: lowering --max_latents cannot help, and the message says so."""
    long_question = "+".join(["1"] * 80)
    data = data_copy(tiny_runs["data"], tmp_path, val=f"{long_question}||<<1+1=2>> #### 2\n")
    line, _, _ = refused(capsys, "train_rl.py", "--init_from", tiny_runs["colar"], "--data_dir", data,
                         "--out_dir", tmp_path / "out", "--device", "cpu", "--max_steps", 1, "--max_latents", 1)
    assert "cannot help" in line and "lower --max_latents" not in line


def test_evaluate_empty_split(tiny_runs, tmp_path, capsys):
    data = data_copy(tiny_runs["data"], tmp_path, test="\n\n")
    line, stdout, _ = refused(capsys, "evaluate.py", "--ckpt", tiny_runs["cot"], "--data_dir", data, "--device", "cpu",
                              "--out", tmp_path / "r.json")
    assert f"no examples in {data}/test.txt" in line
    assert not os.path.exists(tmp_path / "r.json")


def test_sample_empty_questions_file(tiny_runs, tmp_path, capsys):
    questions = write(str(tmp_path / "q.txt"), "\n  \n")
    line, _, _ = refused(capsys, "sample.py", "--ckpt", tiny_runs["cot"], "--questions_file", questions,
                         "--device", "cpu")
    assert f"--questions_file {questions} has no questions" in line


def test_sample_speed_for_a_nocot_model(nocot, capsys):
    line, _, _ = refused(capsys, "sample.py", "--ckpt", nocot, "--c", 1, "--question", "1+2", "--device", "cpu")
    assert "No-CoT" in line and "--c" in line


@pytest.mark.parametrize("flags, expected", [
    (("--top_p", -0.5), "sampled decoding needs --temperature > 0, 0 < --top_p <= 1 and --latent_temperature >= 0, "
                        "got 1.0, -0.5 and 1.0"),
    (("--temperature", "nan"), "sampled decoding needs --temperature > 0, 0 < --top_p <= 1 and --latent_temperature "
                               ">= 0, got nan, 0.9 and 1.0"),
    (("--max_latents", -1), "--max_latents must be >= 0, got -1")])
def test_sample_refuses_sampling_settings_before_loading_the_model(flags, expected, tmp_path, capsys):
    """A top-p that keeps no token or a NaN temperature was a RuntimeError from inside torch.multinomial, a negative
    latent cap silently no latents; refused before the checkpoint (here one that does not exist) is read."""
    line, _, _ = refused(capsys, "sample.py", "--ckpt", tmp_path / "missing", "--question", "1+2", "--decode",
                         "sampled", *flags)
    assert line == f"error: {expected}"


def test_report_output_that_is_a_folder(tmp_path, capsys):
    folder = tmp_path / "taken"
    folder.mkdir()
    record = {"method": "cot", "c": 1, "decode": "greedy", "split": "test", "accuracy": 1.0, "mean_len": 3.0}
    results = write(str(tmp_path / "r.json"), json.dumps([record]))
    line, stdout, _ = refused(capsys, "report.py", "--results", results, "--md", folder)
    assert f"--md {folder} is a folder" in line and "| CoT |" not in stdout  # refused before the table was made


# --- late validation: checked before the expensive work -------------------------------------------------------------
@pytest.mark.parametrize("case", ["seeds", "repeated seeds", "malformed results", "gsm8k source", "mult test file",
                                  "model shape"])
def test_demo_checks_its_inputs_before_any_stage(case, tmp_path, capsys):
    """Bad --seeds (a seed twice: evaluate.py refuses it, after every training stage), a malformed --results file, a missing --gsm8k_source or --mult_test_file, a width that the heads
    do not divide are refused before the data stage. (The "seeds" case runs the real command line, in a new
    process; the others run it in this process.)"""
    results = tmp_path / "results" / "demo.json"
    args = ["--data_dir", tmp_path / "data", "--out_dir", tmp_path / "out", "--results", results, "--device", "cpu",
            "--max_steps", 2, "--colar_steps", 2, "--rl_steps", 1, "--rl_eval_n", 2, "--n_test", 2]
    if case == "seeds":
        args += ["--seeds", "1,x"]
    elif case == "repeated seeds":
        args += ["--seeds", "0,1,0"]
    elif case == "malformed results":
        write(str(results), '[{"method": "cot",')
    elif case == "gsm8k source":
        args += ["--task", "gsm8k", "--gsm8k_source", tmp_path / "missing"]
    elif case == "model shape":
        args += ["--n_embd", 100, "--n_head", 8]
    else:
        args += ["--task", "mult4", "--mult_test_file", tmp_path / "missing.txt"]
    if case == "seeds":
        line, stdout, _ = refused_command("demo.py", *args)
    else:
        line, stdout, _ = refused(capsys, "demo.py", *args)
    assert {"seeds": "--seeds", "repeated seeds": "each once, got '0,1,0'", "gsm8k source": "--gsm8k_source", "mult test file": "--mult_test_file",
            "model shape": "--n_embd (100) must be a multiple of --n_head (8)"}.get(case, "--results") in line
    assert not os.path.exists(tmp_path / "data") and not os.path.exists(tmp_path / "out")  # no stage ran
    assert "$ python" not in stdout


def test_demo_refuses_multiplication_data_of_another_chain(tmp_path, capsys):
    """A data folder written with another --format is not trained on under this one's name."""
    data = tmp_path / "mult4"
    data.mkdir()
    for split in ("train", "val", "test"):
        write(str(data / f"{split}.txt"), "5632*7434||<<55561>> <<006490=551111>> #### 5 5 6 0 8 2 0 1\n")
    write(str(data / "meta.json"), json.dumps({"config": {"digits": 4, "format": "product"}}))
    line, stdout, _ = refused(capsys, "demo.py", "--task", "mult4", "--data_dir", data, "--out_dir", tmp_path / "out",
                              "--device", "cpu")
    assert f"--data_dir {data} holds data made with --mult_format product, not --mult_format interleaved" in line
    assert not os.path.exists(tmp_path / "out") and "$ python" not in stdout
    # 4x4 data under the mult5 name: refused too (only the chain was compared)
    write(str(data / "meta.json"), json.dumps({"config": {"digits": 4, "format": "interleaved", "lag": 0}}))
    line, _, _ = refused(capsys, "demo.py", "--task", "mult5", "--data_dir", data, "--out_dir", tmp_path / "out")
    assert line.endswith(f"--data_dir {data} holds data made with --digits 4, not --digits 5; give another --data_dir")
    write(str(data / "meta.json"), "{not json")  # (was a traceback from json.load)
    line, _, _ = refused(capsys, "demo.py", "--task", "mult4", "--data_dir", data, "--out_dir", tmp_path / "out")
    assert f"--data_dir {data}/meta.json is not valid JSON" in line


def test_demo_refuses_synthetic_data_of_other_lengths(tmp_path):
    """Data made with other --steps_min / --steps_max is not trained on under these (it was reused silently)."""
    data = str(tmp_path / "synth")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=4, n_val=2, n_test=2, steps_min=6, steps_max=8))
    cfg = demo.resolve(demo.DemoConfig(data_dir=data, out_dir=str(tmp_path / "out"), device="cpu"))
    demo.check_inputs(cfg)  # the data it would make: used
    with pytest.raises(UserError, match=f"--data_dir {data} holds data made with --steps_min 6 --steps_max 8, not "
                                        f"--steps_min 3 --steps_max 4; give another --data_dir"):
        demo.check_inputs(replace(cfg, steps_min=3, steps_max=4))
    redundant = str(tmp_path / "synth_check")  # the RL check task's data: a redundant closing step
    synthetic.main(synthetic.SynthConfig(out=redundant, n_train=4, n_val=2, n_test=2, check_p=0.5))
    with pytest.raises(UserError, match=f"--data_dir {redundant} holds data made with --check_p 0.5, not --check_p "
                                        f"0.0; give another --data_dir$"):
        demo.check_inputs(replace(cfg, data_dir=redundant))


def test_evaluate_checks_out_before_evaluating(tiny_runs, tmp_path):
    """A malformed --out file is found before the evaluation, not after it, when its records would be lost. (The
    evaluation commands' case run as a real command line, in a new process.)"""
    out = write(str(tmp_path / "r.json"), "[{")
    line, stdout, _ = refused_command("evaluate.py", "--ckpt", tiny_runs["colar"], "--device", "cpu", "--out", out)
    assert f"--out {out}" in line and "not valid JSON" in line
    assert "accuracy" not in stdout  # no record was computed
    with open(out) as f:
        assert f.read() == "[{"  # and the file is as it was


def test_evaluate_checks_flags_before_loading_the_model(tiny_runs, tmp_path, capsys):
    """--c is checked before the checkpoint is even read: the checkpoint named here does not exist."""
    line, _, _ = refused(capsys, "evaluate.py", "--ckpt", tmp_path / "missing", "--data_dir", tiny_runs["data"],
                         "--device", "cpu", "--c", "1,x")
    assert "--c must be comma-separated integers" in line
