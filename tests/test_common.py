"""common.py (the --flags parser, one-line CLI errors, devices, the optimizer, the data order, run folders) and the
project's import rules: common imports nothing from the project, and no script imports another script.

Run: .venv/bin/python -m pytest tests/test_common.py
"""
import ast
import json
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, tiny_gpt

from checkpoint import open_run, save_checkpoint
from common import (EpochSampler, UserError, check_flags, get_lr, grad_accum_steps, make_optimizer, parse_config,
                    pick_device, print_config, read_records, run_cli, trained_speeds)
from latent_head import LatentHead

SCRIPTS = ("train_sft", "train_rl", "evaluate", "demo", "bench", "report", "latents")  # each run as python X.py


@dataclass
class Cfg:
    name: str = "a"      # a name
    n: int = 3           # a count
    lr: float = 0.5      # a rate
    flag: bool = False   # a switch


def test_flags_types_and_defaults():
    assert parse_config(Cfg, []) == Cfg()
    cfg = parse_config(Cfg, ["--name", "b", "--n", "7", "--lr", "1e-3", "--flag", "true"])
    assert cfg == Cfg(name="b", n=7, lr=1e-3, flag=True)
    assert parse_config(Cfg, ["--flag", "no"]).flag is False


def test_print_config_quotes_a_value_with_spaces(capsys):
    print_config(Cfg(name="2:100 3:50", n=0))  # else the line would read as pairs name=2:100 and 3:50
    assert capsys.readouterr().out == "name='2:100 3:50' n=0 lr=0.5 flag=False\n"
    print_config(Cfg(name=""))
    assert capsys.readouterr().out == "name= n=3 lr=0.5 flag=False\n"


def test_config_file_then_flags_override(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n": 9, "name": "file"}))
    assert parse_config(Cfg, ["--config", str(path), "--n", "4"]) == Cfg(name="file", n=4)


@pytest.mark.parametrize("argv", [["--n", "x"], ["--lr", "fast"], ["--flag", "maybe"], ["--nope", "1"]])
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and err.startswith("error: ") and err.count("\n") == 1  # one line, no usage text


def test_config_file_with_unknown_field(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n": 1, "typo": 2}))
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--config", str(path)])
    assert "typo" in capsys.readouterr().err


def test_help_shows_the_field_comments(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--help"])
    out = capsys.readouterr().out
    assert "a count (default: 3)" in out and "a switch (default: False)" in out


def test_run_cli_turns_user_errors_into_one_line(capsys):
    def main(cfg):
        raise UserError(f"bad value {cfg.n}")
    with pytest.raises(SystemExit) as e:
        run_cli(main, Cfg())
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: bad value 3\n"
    assert run_cli(lambda cfg: cfg.n + 1, Cfg()) == 4


def test_check_flags_names_the_first_flag_out_of_range():
    @dataclass
    class C:
        mode: str = "cot"
        lr: float = 1e-3
        n: int = 0

    ok = dict(choices=dict(mode=("cot", "nocot")), positive=("lr",), nonnegative=("n",))
    check_flags(C(), **ok)  # 0 is >= 0
    for bad, line in ((C(mode="co"), "--mode must be one of cot, nocot, got 'co'"),
                      (C(lr=0.0), "--lr must be positive, got 0.0"),
                      (C(lr=float("nan")), "--lr must be positive, got nan"),
                      (C(lr=float("inf")), "--lr must be a finite number, got inf"),
                      (C(n=-1), "--n must be >= 0, got -1")):
        with pytest.raises(UserError) as e:
            check_flags(bad, **ok)
        assert str(e.value) == line


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UserError, match="unknown device"):
        pick_device("tpu-ish")


def test_trained_speeds():
    assert trained_speeds({"mode": "cot"}) == [1]
    assert trained_speeds({"mode": "nocot"}) == [0]
    assert trained_speeds({"mode": "colar", "c_values": "", "c_max": 3}) == [1, 2, 3]
    assert trained_speeds({"mode": "colar", "c_values": "5,1,3,3", "c_max": 5}) == [1, 3, 5]  # repeats only weight


def test_lr_schedule_endpoints():
    cfg = SimpleNamespace(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert get_lr(0, cfg) == pytest.approx(1e-4)          # (0 + 1) / 10 of the peak
    assert get_lr(9, cfg) == pytest.approx(1e-3)          # end of warm-up: the peak
    assert get_lr(60, cfg) == pytest.approx(5.5e-4)       # half way through the cosine: the middle
    assert get_lr(110, cfg) == pytest.approx(1e-4)        # the end: min_lr
    assert get_lr(500, cfg) == pytest.approx(1e-4)        # past the end: stays at min_lr


def test_grad_accum_steps():
    assert grad_accum_steps(0, 16, 1) == 1      # 0: one pass of batch_size on each process
    assert grad_accum_steps(0, 8, 4) == 1
    assert grad_accum_steps(64, 8, 2) == 4      # 64 = 8 per pass x 2 processes x 4 micro-steps
    assert grad_accum_steps(48, 4, 3) == 4
    for total, batch, world in [(40, 8, 2), (6, 2, 2), (2, 2, 2), (10, 4, 1)]:
        with pytest.raises(UserError, match=f"--total_batch_size {total} is not a multiple of --batch_size {batch} "
                                            f"x {world} process"):
            grad_accum_steps(total, batch, world)


def test_make_optimizer_groups_and_deduplicates():
    model = tiny_gpt(vocab_size=20, block_size=8, n_embd=8)
    head = LatentHead(8)
    head.mu.bias.requires_grad_(False)  # a frozen parameter is left out
    opt = make_optimizer([model, head, model], lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # the tied wte / lm_head and the repeated model are in once
    expected = {id(p) for m in (model, head) for p in m.parameters() if p.requires_grad}
    assert set(ids) == expected and id(head.mu.bias) not in ids and id(model.wte.weight) in ids
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert any(p is head.net[3].weight for p in no_decay["params"])  # the head's LayerNorm is not decayed


def test_epoch_sampler_covers_each_epoch_and_restores():
    s = EpochSampler(10, 3, seed=5)
    epoch0 = s.next() + s.next() + s.next()
    assert sorted(epoch0) == sorted(set(epoch0)) and len(epoch0) == 9    # no repeats within an epoch
    state = s.state_dict()
    ahead = [s.next() for _ in range(4)]
    assert len(set(ahead[0] + ahead[1] + ahead[2])) == 9 and s.epoch == 2  # epoch 1, then the tail dropped again
    t = EpochSampler(10, 3, seed=5)
    t.load_state_dict(state)
    assert [t.next() for _ in range(4)] == ahead
    assert EpochSampler(10, 3, seed=6).next() != EpochSampler(10, 3, seed=5).next()
    with pytest.raises(UserError, match="fewer than one batch"):
        EpochSampler(2, 3, seed=0)


def test_open_run(tmp_path):
    out = str(tmp_path / "run")
    assert open_run(out, False, "train_sft") is None  # a new run
    with pytest.raises(UserError, match="holds no checkpoint"):
        open_run(out, True, "train_sft")
    save_checkpoint(out, 2, {"script": "train_sft", "model": {}, "model_config": {}, "step": 2})
    with pytest.raises(UserError, match="already holds checkpoints"):
        open_run(out, False, "train_sft")
    assert open_run(out, True, "train_sft")["step"] == 2
    with pytest.raises(UserError, match="holds a run of train_sft, not of train_rl"):
        open_run(out, True, "train_rl")
    old = str(tmp_path / "unmarked")
    save_checkpoint(old, 1, {"model": {}, "model_config": {}})  # no "script": not resumable by either
    with pytest.raises(UserError, match="holds a run of another script, not of train_sft"):
        open_run(old, True, "train_sft")


# --- import rules ------------------------------------------------------------------------------------------------
def imported_modules(path):
    """The top-level names of every module a file imports (`import a.b` and `from a.b import c` give `a`); relative
    imports give ".". Imports inside functions count too."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module.split(".")[0])
    return names


def project_modules():
    """The project's own importable names: the top-level .py files and packages of the repository root."""
    names = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    names |= {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    return names


def test_import_rules_see_imports():
    """Control: the parser finds the imports the rules below look for."""
    assert {"colar", "common", "sample", "model", "torch"} <= imported_modules(os.path.join(ROOT, "train_sft.py"))
    assert {"common", "data"} <= imported_modules(os.path.join(ROOT, "evaluate.py"))
    assert {"common", "colar", "model", "data"} <= project_modules()
    assert set(SCRIPTS) <= project_modules()


def test_common_imports_nothing_from_the_project():
    mine = imported_modules(os.path.join(ROOT, "common.py")) & (project_modules() | {"."})
    assert not mine, f"common.py imports project modules: {sorted(mine)}"
    # run folders build on the library modules only: the flags, the model and the tokenizer (GPT-2's starting point)
    assert imported_modules(os.path.join(ROOT, "checkpoint.py")) & project_modules() == {"common", "model", "tokenizer"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_script_imports_another_script(script):
    others = imported_modules(os.path.join(ROOT, script + ".py")) & set(SCRIPTS) - {script}
    assert not others, f"{script}.py imports the script(s) {sorted(others)}: move what they share into a library"


def test_every_top_level_module_is_packaged():
    """pyproject.toml's py-modules lists every top-level module, so `pip install .` leaves none out."""
    import re
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        listed = set(re.findall(r'"(\w+)"', re.search(r"py-modules = \[(.*?)\]", f.read(), re.S).group(1)))
    assert listed == {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}


def test_read_records_refuses_a_record_of_the_wrong_types_before_any_work(tmp_path):
    """A record whose c is a list made evaluate.py fail when merging, after its evaluation (lost)."""
    path = tmp_path / "r.json"
    good = dict(method="cot", c=1, decode="greedy", split="test", seeds=[])
    path.write_text(json.dumps([good]))
    assert read_records(str(path), "--out") == [good]  # the control
    for bad, words in ((dict(good, c=[1]), "a record's c is [1]"), (dict(good, c=True), "a record's c is true"),
                       (dict(good, seeds=3), "a record's seeds is 3"), ("cot", '"cot" is not a record')):
        path.write_text(json.dumps([good, bad]))
        with pytest.raises(UserError, match=re.escape(f"--out {path} is not a JSON list of evaluation records "
                                                      f"({words}): fix or move it")):
            read_records(str(path), "--out")
