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
