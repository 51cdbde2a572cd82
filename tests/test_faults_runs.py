"""Run folders under faults, met as a user meets them: a diverging run saves no broken checkpoint and names the one it
keeps; RL's `best` is never worse than the model it started from; a resumed run keeps its mode; one live run per
folder, and a killed run does not leave its folder locked; a failed or killed save leaves no partial file; a foreign
pickle and a pointer to a missing file each get their own message. The scripts' commands are checked as a user meets
them (exit status 2, one `error:` line on stderr, the folder afterwards): mostly in this process, as a script's
`__main__` runs them (run_cli(main, parse_config(...))), which spares each the ~1.5 s of a new process's
`import torch`; in a new process where a second process is the point (a folder held by another live run, a run
killed holding it).

Run: .venv/bin/python -m pytest tests/test_faults_runs.py
"""
import contextlib
import errno
import fractions
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_train_cfg

import checkpoint
import train_rl
import train_sft
from checkpoint import load_checkpoint, open_run, read_pointer, save_checkpoint
from common import UserError, parse_config, run_cli
TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--batch_size", "8", "--max_steps", "4", "--eval_n", "2",
        "--warmup_steps", "1", "--log_every", "100", "--device", "cpu"]
DIVERGE = ["--lr", "1e10", "--min_lr", "0", "--grad_clip", "0"]  # one update takes the weights to ~1e10: NaN outputs
SMALL = {"script": "train_sft", "model": {}, "model_config": {}, "step": 0}  # enough of a checkpoint for open_run
COMMANDS = {"train_sft.py": (train_sft.main, train_sft.TrainConfig)}  # the commands run_here runs


def cli(script, *args):
    """Run a script as a user would (one thread, as the tests run). Returns (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def run_here(capsys, script, *args):
    """Run a script's command (`python script args...`) in this process, from the repository root, as its `__main__`
    runs it: run_cli(main, parse_config(Config, args)); then let go of its run folder as the process would at exit
    (checkpoint.release_all). Returns (exit status, stdout, stderr), as `cli` does."""
    main, config = COMMANDS[script]
    capsys.readouterr()  # only this command's output below
    try:
        with contextlib.chdir(ROOT):
            run_cli(main, parse_config(config, [*map(str, args)]))
        rc = 0
    except SystemExit as e:
        rc = 0 if e.code is None else e.code
    finally:
        checkpoint.release_all()
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(rc, err):
    """The one `error:` line a refused or stopped command prints, and nothing else on stderr."""
    assert rc == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


def checkpoints(out):
    return sorted(f for f in os.listdir(out) if f.startswith("ckpt_"))


def sft(data, out, **kw):
    """A tiny SFT run in this process (the same settings as TINY)."""
    base = dict(batch_size=8, max_steps=4, eval_n=2, warmup_steps=1, log_every=100)
    base.update(kw)
    return train_sft.main(tiny_train_cfg(data, out, **base))


@pytest.fixture(scope="module")
def colar_run(tiny_data, tmp_path_factory):
    """A one-step CoLaR run from scratch (c = 1, 2): a starting point for RL, and a folder of mode colar."""
    out = str(tmp_path_factory.mktemp("faults") / "colar")
    sft(tiny_data, out, mode="colar", c_values="1,2", max_latents=4, max_steps=1, eval_every=1)
    return out


# --- divergence --------------------------------------------------------------------------------------------------
def test_divergence_saves_no_broken_checkpoint(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "new")
    with pytest.raises(SystemExit) as e:  # run_cli, as the command runs it, in this process (faster)
        run_cli(train_sft.main, tiny_train_cfg(tiny_data, out, batch_size=8, max_steps=4, eval_n=2, warmup_steps=1,
                                               eval_every=1, lr=1e10, min_lr=0, grad_clip=0))
    msg = error_line(e.value.code, capsys.readouterr().err)
    assert "diverged at step 1" in msg and "no checkpoint was written" in msg
    checkpoint.release_all()  # what the process does as it exits
    assert not os.path.exists(out)  # the run made the folder and wrote nothing in it: it is gone again
    # two good steps, then resumed with a learning rate that breaks the weights at step 3
    out = str(tmp_path / "resumed")
    sft(tiny_data, out, eval_every=1, stop_at=2)
    msg = error_line(*run_here(capsys, "train_sft.py", "--data_dir", tiny_data, "--out_dir", out, *TINY, *DIVERGE,
                               "--eval_every", "1", "--resume", "true")[::2])
    assert "diverged at step 3" in msg and f"the last good checkpoint {out}/ckpt_000002.pt is kept" in msg
    assert read_pointer(out, "latest") == read_pointer(out, "best") == "ckpt_000002.pt"
    assert "ckpt_000003.pt" not in checkpoints(out)
    kept = load_checkpoint(out, "latest")["model"]
    assert all(torch.isfinite(t).all() for t in kept.values() if t.is_floating_point())


def test_nan_loss_names_its_own_step_and_what_is_kept(tiny_data, tmp_path):
    # the update of step 1 breaks the weights; no check at step 1 (eval_every 2), so step 2's own loss is NaN
    with pytest.raises(UserError, match=r"loss became nan at step 2: lower --lr; no checkpoint was written"):
        sft(tiny_data, str(tmp_path / "run"), eval_every=2, lr=1e10, min_lr=0, grad_clip=0)


def test_finite_model_checks_every_module_it_would_save():
    """A weight that is not finite in the model, the latent head or a baseline's thought module makes the set unfit
    to save; finite weights whose forward pass overflows do too."""
    from baselines import thinker
    from conftest import tiny_gpt
    from latent_head import LatentHead
    idx = torch.tensor([[1, 2, 3]])
    model, head, think = tiny_gpt(seed=0), LatentHead(16), thinker("distill", 16)
    assert checkpoint.finite_model(model, head, idx, think) and checkpoint.finite_model(model, None, idx, think)
    for module in (model, head, think):
        p = next(module.parameters())
        saved = p.detach().clone()
        with torch.no_grad():
            p.view(-1)[0] = float("nan")
        assert not checkpoint.finite_model(model, head, idx, think)
        with torch.no_grad():
            p.copy_(saved)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e38)  # finite weights, infinite logits
    assert not checkpoint.finite_model(model, head, idx, think)


def rl(colar_run, tiny_data, out, **kw):
    base = dict(init_from=colar_run, data_dir=tiny_data, out_dir=str(out), c=2, group=2, questions=4, minibatch=8,
                max_latents=4, max_answer_tokens=4, max_steps=4, eval_every=2, eval_n=2, log_every=100, device="cpu")
    base.update(kw)
    return train_rl.main(train_rl.RLConfig(**base))


@pytest.mark.parametrize("accuracy, best", [({0: 0.5, 2: 0.25, 4: 0.25}, "ckpt_000000.pt"),  # a collapse
                                            ({0: 0.5, 2: 0.75, 4: 0.25}, "ckpt_000002.pt")])
def test_rl_best_is_never_worse_than_the_starting_model(accuracy, best, colar_run, tiny_data, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setattr(train_rl, "validate", lambda m, h, t, v, cfg, step: (accuracy[step], 0.0, f"eval {step}"))
    out = str(tmp_path / "rl")
    rl(colar_run, tiny_data, out)
    assert read_pointer(out, "best") == best
    ckpt = load_checkpoint(out)
    assert ckpt["val_acc"] == max(accuracy.values()) and ckpt["step"] == int(best[5:11])
    if best == "ckpt_000000.pt":  # the starting weights, kept in the RL folder
        start = load_checkpoint(colar_run)["model"]
        assert all(torch.equal(start[k], v) for k, v in ckpt["model"].items())
    said = "no checkpoint beat the starting model" in capsys.readouterr().out
    assert said == (best == "ckpt_000000.pt")


# --- resuming ------------------------------------------------------------------------------------------------------
def test_resume_keeps_the_mode(colar_run, tiny_data, tmp_path, capsys):
    out = str(tmp_path / "colar")
    shutil.copytree(colar_run, out)
    before = sorted(os.listdir(out))
    msg = error_line(*run_here(capsys, "train_sft.py", "--data_dir", tiny_data, "--out_dir", out, *TINY, "--mode",
                               "cot", "--resume", "true")[::2])
    assert msg == ("error: --mode=cot does not match the run being resumed (colar): resume with the run's own "
                   "settings")
    assert sorted(os.listdir(out)) == before


def test_resume_names_the_settings_it_changes(tiny_data, tmp_path, capsys):
    """A resumed run may change a setting outside RESUME_KEYS (a lower --lr, a longer --max_steps), never unseen: the
    changes are printed. A checkpoint saved before a setting existed resumes as if it had that setting's default."""
    out = str(tmp_path / "run")
    sft(tiny_data, out, eval_every=1, stop_at=2)
    capsys.readouterr()
    sft(tiny_data, out, eval_every=1, stop_at=3, resume=True)
    said = [s for s in capsys.readouterr().out.splitlines() if s.startswith("resuming with")]
    assert said == ["resuming with settings the run did not have: --stop_at 3 (the run: 2)"]
    sft(tiny_data, out, eval_every=1, max_steps=5, lr=1e-3, resume=True)
    said = [s for s in capsys.readouterr().out.splitlines() if s.startswith("resuming with")]
    assert said == ["resuming with settings the run did not have: --max_steps 5 (the run: 4), --lr 0.001 (the run: "
                    "0.002), --stop_at 0 (the run: 3)"]
    # an older checkpoint, saved before removal_lambda (a resume key) existed: the default stands in for it
    path = os.path.join(out, read_pointer(out, "latest"))
    old = torch.load(path, weights_only=False)
    del old["config"]["removal_lambda"]
    torch.save(old, path)
    assert sft(tiny_data, out, eval_every=1, max_steps=6, lr=1e-3, resume=True)["step"] == 6


def test_resuming_a_finished_run_writes_nothing(colar_run, tiny_data, tmp_path):
    """The recipes resume every run folder they find (runs/*.sh): a finished one must end at once, its files as
    they were."""
    def files(folder):
        return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}
    out = str(tmp_path / "colar")
    shutil.copytree(colar_run, out)
    before = files(out)
    assert sft(tiny_data, out, mode="colar", c_values="1,2", max_latents=4, max_steps=1, eval_every=1,
               resume=True)["step"] == 1
    assert files(out) == before
    rl_out = tmp_path / "rl"
    rl(colar_run, tiny_data, rl_out, max_steps=2)
    before = files(rl_out)
    assert rl(colar_run, tiny_data, rl_out, max_steps=2, resume=True)["step"] == 2
    assert files(rl_out) == before


# --- one live run per folder ---------------------------------------------------------------------------------------
def test_a_run_folder_that_is_a_file_or_no_name_and_an_empty_checkpoint_path_say_so(tmp_path):
    """They were `cannot write in .../afile: File exists`, `cannot write in : No such file or directory` and
    `checkpoint not found: ` (with nothing after it)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match=re.escape(f"{str(afile)!r} is not a run folder: a file is there")):
        open_run(str(afile), False, "train_sft")
    with pytest.raises(UserError, match=re.escape("'' is not a run folder: an empty name")):
        open_run("", False, "train_sft")
    with pytest.raises(UserError, match=re.escape("no checkpoint named (an empty path): give a checkpoint file")):
        load_checkpoint("")


def test_one_live_run_per_folder(tiny_data, tmp_path):
    """A second live run in a folder is refused, by the real command in a new process (this process holds the
    folder: a run in it would keep it); a run killed holding the folder leaves it free for the next."""
    out = str(tmp_path / "run")
    os.makedirs(out)
    assert open_run(out, False, "train_sft") is None  # this process now runs in `out`
    stale = os.path.join(out, "ckpt_000004.pt.tmp")  # as if this run were writing a checkpoint right now
    open(stale, "wb").close()
    held = (f"error: {out} is in use by another run (pid {os.getpid()} on {socket.gethostname()}): wait for it to "
            f"end, or choose another --out_dir")
    for resume in ("false", "true"):
        assert error_line(*cli("train_sft.py", "--data_dir", tiny_data, "--out_dir", out, *TINY,
                               "--resume", resume)[::2]) == held
    assert sorted(os.listdir(out)) == ["ckpt_000004.pt.tmp", "lock"]  # refused before touching anything
    checkpoint.release_run(out)
    os.remove(stale)
    # a run that is killed holding the lock leaves nothing stuck: the next one takes the folder
    killed = subprocess.run([sys.executable, "-c", f"import sys, os; sys.path.insert(0, {ROOT!r}); import checkpoint; "
                             f"checkpoint.open_run({out!r}, False, 'train_sft'); os.kill(os.getpid(), 9)"], timeout=120)
    assert killed.returncode == -9 and "lock" in os.listdir(out)  # its lock file stays, naming a dead process
    run = sft(tiny_data, out)
    assert run["step"] == 4 and read_pointer(out, "latest") == "ckpt_000004.pt"
    assert "lock" not in os.listdir(out)  # let go at the end of the run


def test_only_the_main_process_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # a torchrun process other than rank 0
    out = str(tmp_path / "run")
    save_checkpoint(out, 1, SMALL)
    assert open_run(out, True, "train_sft")["step"] == 0
    assert "lock" not in os.listdir(out)


# --- saves that fail -----------------------------------------------------------------------------------------------
def test_stale_partial_files_are_removed(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    os.makedirs(out)
    for name in ("ckpt_000001.pt.tmp", "latest.tmp"):  # left by a run killed in the middle of a save
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"partial")
    rc, _, err = run_here(capsys, "train_sft.py", "--data_dir", tiny_data, "--out_dir", out, *TINY)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["best", "ckpt_000004.pt", "latest"]
    with open(os.path.join(out, "ckpt_000001.pt.tmp"), "wb") as f:  # also at the next save of a run
        f.write(b"partial")
    save_checkpoint(out, 5, SMALL)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.parametrize("failure", [RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 "
                                                  "vs 0\nframe #0: c10::Error"),
                                     OSError(errno.ENOSPC, "No space left on device")])
def test_a_failed_save_is_one_line_and_leaves_no_partial_file(failure, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    save_checkpoint(out, 1, SMALL)

    def full_disk(obj, f):
        f.write(b"x" * 64)  # some bytes reach the file, then the write fails
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as e:
        save_checkpoint(out, 2, SMALL)
    reason = "unexpected pos 64 vs 0" if isinstance(failure, RuntimeError) else "No space left on device"
    assert str(e.value).startswith(f"cannot write checkpoint {out}/ckpt_000002.pt: ") and reason in str(e.value)
    assert str(e.value).endswith(f"the last good checkpoint {out}/ckpt_000001.pt is kept") and "\n" not in str(e.value)
    assert sorted(os.listdir(out)) == ["ckpt_000001.pt", "latest"]


def test_a_save_stopped_between_its_pointers_leaves_latest_behind(tmp_path, monkeypatch):
    """`best` is written before `latest`: a save that fails (or is killed) between them leaves `latest` on the step
    before, so the run resumes from a checkpoint whose best score `best` still names, and keep_last never removes
    the best checkpoint (with `latest` first, latest held step 2's best score while best named step 1)."""
    out = str(tmp_path / "run")
    save_checkpoint(out, 1, {**SMALL, "best_val": 0.5}, best=True)
    real = checkpoint._atomic_write

    def fail_best(out_dir, name, write, what):
        if name == "best":
            raise UserError(f"cannot write {what}")
        return real(out_dir, name, write, what)

    monkeypatch.setattr(checkpoint, "_atomic_write", fail_best)
    with pytest.raises(UserError, match="cannot write"):
        save_checkpoint(out, 2, {**SMALL, "best_val": 0.9}, best=True)
    assert (read_pointer(out, "latest"), read_pointer(out, "best")) == ("ckpt_000001.pt", "ckpt_000001.pt")


def test_keep_last_keeps_the_latest_steps_past_step_999999(tmp_path):
    """Checkpoint names carry six digits or more: ckpt_1000000.pt sorts before ckpt_999999.pt by name, and keep_last
    (sorting by name) kept 999,998 and 999,999 and removed 1,000,000 when 1,000,001 was saved."""
    out = str(tmp_path / "run")
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        save_checkpoint(out, step, SMALL, keep_last=2)
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt_")) == ["ckpt_1000000.pt", "ckpt_1000001.pt"]


def test_a_failed_save_stops_training_with_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    def full_disk(obj, f):
        f.write(b"x" * 64)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\nframe #0")

    monkeypatch.setattr(torch, "save", full_disk)
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        run_cli(train_sft.main, tiny_train_cfg(tiny_data, out, batch_size=8, max_steps=2, eval_n=2, log_every=100))
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: cannot write checkpoint {out}/ckpt_000002.pt: [enforce fail at "
                                       f"inline_container.cc:664] . unexpected pos 64 vs 0; no checkpoint was "
                                       f"written\n")
    checkpoint.release_all()  # what the process does as it exits
    assert not os.path.exists(out)  # nothing was written: the folder the run made is gone again


# --- messages that name the cause ----------------------------------------------------------------------------------
def test_a_foreign_pickle_is_refused_as_such(tmp_path):
    path = str(tmp_path / "foreign.pt")
    torch.save({"model": {}, "model_config": {}, "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UserError, match=r"foreign.pt holds objects other than tensors and plain values "
                                        r"\(fractions.Fraction\): not a checkpoint of this project, or unsafe; "
                                        r"refused$"):
        load_checkpoint(path)
    with open(path, "rb") as f, open(path + ".cut", "wb") as g:  # the control: a file cut short is still corrupt
        g.write(f.read()[:100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(path + ".cut")


def test_a_pointer_to_a_missing_file_says_so(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    save_checkpoint(out, 1, SMALL, best=True)
    save_checkpoint(out, 2, SMALL)
    os.remove(os.path.join(out, "ckpt_000002.pt"))
    msg = error_line(*run_here(capsys, "train_sft.py", "--data_dir", tiny_data, "--out_dir", out, *TINY,
                               "--resume", "true")[::2])
    assert msg.startswith(f"error: {out}/latest points at ckpt_000002.pt, which is missing")
    assert load_checkpoint(out)["path"].endswith("ckpt_000001.pt")  # `best` is there
    os.remove(os.path.join(out, "ckpt_000001.pt"))
    with pytest.raises(UserError, match=r"/best points at ckpt_000001.pt, which is missing"):
        load_checkpoint(out)


def test_a_pointer_that_is_not_text_is_refused_in_one_line(tmp_path):
    """A checkpoint copied over `best` (a UnicodeDecodeError inside the loader) or a folder named `latest`."""
    out = str(tmp_path / "run")
    save_checkpoint(out, 1, SMALL, best=True)
    shutil.copy(os.path.join(out, "ckpt_000001.pt"), os.path.join(out, "best"))
    with pytest.raises(UserError, match=r"run/best is not a pointer \(a text file naming one of the folder's"):
        load_checkpoint(out)
    os.remove(os.path.join(out, "latest"))
    os.mkdir(os.path.join(out, "latest"))
    with pytest.raises(UserError, match="run/latest is not a pointer"):
        read_pointer(out, "latest")


def test_a_checkpoint_read_for_its_settings_alone_is_the_same_checkpoint(tmp_path):
    """mmap=True (the demo's reads of a run's step, settings and seconds) leaves the tensors in the file until
    touched: the values read are the saved ones, and a foreign or cut file is refused as by a full read."""
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint(str(tmp_path / "run"), 3, {**SMALL, "model": weights, "step": 3, "seconds": 12.5})
    ckpt = load_checkpoint(str(tmp_path / "run"), "latest", mmap=True)
    assert (ckpt["step"], ckpt["seconds"]) == (3, 12.5) and ckpt["path"].endswith("ckpt_000003.pt")
    assert torch.equal(ckpt["model"]["w"], torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))
    foreign = str(tmp_path / "foreign.pt")
    torch.save({"model": {}, "model_config": {}, "note": fractions.Fraction(1, 3)}, foreign)
    with pytest.raises(UserError, match="fractions.Fraction"):
        load_checkpoint(foreign, mmap=True)
    with open(ckpt["path"], "rb") as f, open(foreign + ".cut", "wb") as g:
        g.write(f.read()[:100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(foreign + ".cut", mmap=True)
