"""The --flags parser, the one-line CLI errors and the device helper. Run: .venv/bin/python -m pytest tests"""
import json
from dataclasses import dataclass

import pytest
import torch

from common import UserError, parse_config, pick_device, run_cli


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


def test_config_file_then_flags_override(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n": 9, "name": "file"}))
    assert parse_config(Cfg, ["--config", str(path), "--n", "4"]) == Cfg(name="file", n=4)


@pytest.mark.parametrize("argv", [["--n", "x"], ["--lr", "fast"], ["--flag", "maybe"], ["--nope", "1"]])
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, argv)
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err


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


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UserError, match="unknown device"):
        pick_device("tpu-ish")


def test_trained_speeds():
    from common import trained_speeds
    assert trained_speeds({"mode": "cot"}) == [1]
    assert trained_speeds({"mode": "nocot"}) == [0]
    assert trained_speeds({"mode": "colar", "c_values": "", "c_max": 3}) == [1, 2, 3]
    assert trained_speeds({"mode": "colar", "c_values": "5,1,3,3", "c_max": 5}) == [1, 3, 5]  # repeats only weight
