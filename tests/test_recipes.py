"""Tests of the recipes in runs/: every flag a recipe passes to one of this repository's commands is a flag of that
command (a renamed or removed flag would otherwise only show up minutes into a run), and each script is valid bash.

Run: .venv/bin/python -m pytest tests/test_recipes.py
"""
import dataclasses
import glob
import importlib
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "runs", "*.sh")))


def commands(text):
    """(module, [flag names]) for each invocation of one of this repository's scripts in a shell script, with its
    backslash-continued lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", text)
    found = []
    for line in text.splitlines():
        line = line.split(" # ")[0].strip()
        if not line or line.startswith("#"):
            continue
        for m in re.finditer(r"(?:(?<=\s)|^)(-m\s+data\.[a-z_]+|[a-z_0-9]+\.py)\b(.*?)(?=$|;|&&|\|\|)", line):
            target, rest = m.group(1), m.group(2)
            module = target.split()[-1] if target.startswith("-m") else target[:-3]
            if os.path.exists(os.path.join(ROOT, module.replace(".", "/") + ".py")):
                found.append((module, re.findall(r"--([a-z_0-9]+)", rest)))
    return found


def known_flags(module):
    """The field names of the config dataclasses a command module defines."""
    mod = importlib.import_module(module)
    return {f.name for obj in vars(mod).values()
            if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == mod.__name__
            for f in dataclasses.fields(obj)}


def test_the_parser_finds_commands_and_flags():
    text = ("train out/x $PY train_sft.py --data_dir $DATA --mode cot \\\n    --max_steps 10  # a comment --nothing\n"
            "[ -f d/train.txt ] || $PY -m data.multiplication --digits 4 --out d\n"
            "timeout 9 $PY -m torch.distributed.run --nproc_per_node=2 train_rl.py --c 5\n"
            "echo not_a_script.py --x\n")
    assert commands(text) == [("train_sft", ["data_dir", "mode", "max_steps"]),
                              ("data.multiplication", ["digits", "out"]), ("train_rl", ["c"])]


def test_there_are_recipes():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_flags_exist(path):
    with open(path) as f:
        found = commands(f.read())
    assert found, f"{path} runs none of this repository's commands"
    for module, flags in found:
        unknown = set(flags) - known_flags(module)
        assert not unknown, f"{os.path.basename(path)}: {module} has no flag(s) {sorted(unknown)}"


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_is_valid_bash(path):
    assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0



def run_curriculum(stages):
    """runs/mult_curriculum.sh with STAGES=stages, a starting model that does not exist and no Python to run."""
    env = dict(os.environ, STAGES=stages, INIT="/nonexistent", PY="false")
    return subprocess.run(["bash", os.path.join(ROOT, "runs", "mult_curriculum.sh")], capture_output=True, text=True,
                          env=env)


@pytest.mark.parametrize("stages", ["3:6000 4", "3:6000 4:", "x:100", "3:06000", "3-6000", "3:100 6:100"])
def test_curriculum_refuses_a_malformed_stage_before_any_work(stages):
    """A stage that is not speed:steps is named in one line before the first command runs (the parameter expansions
    would otherwise turn `4` into a 4-step run at c = 4, minutes into the recipe)."""
    run = run_curriculum(stages)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"error: STAGES holds '{stages.split()[-1]}', not speed:steps "
                                               "with a speed of 1..5 (e.g. 4:6000)"]


def test_curriculum_accepts_well_formed_stages_and_checks_the_start_next():
    run = run_curriculum("3:6000 4:10000")
    assert run.returncode == 1 and run.stderr.startswith("error: no trained model in /nonexistent")


def test_curriculum_refuses_a_stage_named_twice():
    """Two equal stages would share one run folder: the second would find the first finished and skip its training."""
    run = run_curriculum("3:6000 4:6000 4:6000")
    assert run.returncode == 1
    assert run.stderr.strip() == "error: STAGES holds '4:6000' twice; a stage is named by its speed and steps"


def test_curriculum_passes_an_ablation_switch_into_its_own_folders(tmp_path):
    """ABLATION reaches every training stage, TAG tags the folders and the evaluated method, and each stage starts from
    the one before; ABLATION without TAG is refused (its runs would share the plain runs' folders)."""
    log, init = tmp_path / "commands.txt", tmp_path / "c4"
    init.mkdir()
    (init / "latest").write_text("ckpt_000010.pt\n")
    fake = tmp_path / "py"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')  # records each command instead of running it
    fake.chmod(0o755)
    env = dict(os.environ, STAGES="5:10 5:8", INIT=str(init), PY=str(fake), ABLATION="--pool mean")
    script = os.path.join(ROOT, "runs", "mult_curriculum.sh")
    refused = subprocess.run(["bash", script], capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ABLATION needs a TAG")
    assert subprocess.run(["bash", script], capture_output=True, text=True, env=dict(env, TAG="mp")).returncode == 0
    train = [line.split() for line in log.read_text().splitlines() if line.startswith("train_sft.py")]
    arg = lambda words, flag: words[words.index(flag) + 1]  # noqa: E731
    assert [(arg(t, "--out_dir"), arg(t, "--init_from"), arg(t, "--pool")) for t in train] == [
        ("out/mult4_curriculum/colar_c5_pad0_10_mp", str(init), "mean"),
        ("out/mult4_curriculum/colar_c5_pad0_8_mp", "out/mult4_curriculum/colar_c5_pad0_10_mp", "mean")]
    methods = [arg(line.split(), "--method") for line in log.read_text().splitlines() if line.startswith("evaluate")]
    assert methods == ["colar_c5_pad0_10_mp", "colar_c5_pad0_8_mp"]
