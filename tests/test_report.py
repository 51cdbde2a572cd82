"""Tests of report.py: the Pareto front, the table's rows, order and cells, reading the records, the CLI.

Run: .venv/bin/python -m pytest tests
"""
import json
import sys

import pytest

from common import UserError, run_cli
from report import (ReportConfig, load_records, main, pareto_front, plot, point_label, spread_table, table,
                    versus_table)


def rec(method, c, decode, accuracy, mean_len, ci95=None, split="test"):
    """A record as evaluate.py writes it (only the fields the report reads, plus n)."""
    return {"method": method, "c": c, "decode": decode, "split": split, "n": 1000, "accuracy": accuracy,
            "mean_len": mean_len, "ci95": ci95, "seeds": [0, 1, 2, 3, 4] if decode == "sampled" else []}


def body(md):
    """The table's data rows as lists of cells (header and separator dropped)."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in md.splitlines()[2:]]


def test_pareto_front_hand_worked():
    points = [(55.0, 100.0),  # dominated by (14, 100): longer, as accurate
              (28.0, 100.0),  # same
              (19.0, 99.8),   # dominated by (14, 100): longer and worse
              (14.0, 100.0),  # on the front, twice: equal points do not dominate each other
              (11.0, 99.3),   # on the front
              (11.0, 90.0),   # dominated by (11, 99.3): same length, worse
              (0.0, 18.0),    # on the front: nothing is shorter
              (14.0, 100.0),
              (20.0, 50.0)]   # dominated
    before = list(points)
    assert pareto_front(points) == [(0.0, 18.0), (11.0, 99.3), (14.0, 100.0), (14.0, 100.0)]
    assert points == before  # pure: the input is left alone
    assert pareto_front([]) == []
    assert pareto_front([[3, 0.5]]) == [(3, 0.5)]
    # equal accuracy: only the shortest; a longer point that is more accurate stays
    assert pareto_front([(5, 0.5), (10, 0.5), (12, 0.6)]) == [(5, 0.5), (12, 0.6)]


RECORDS = [rec("colar_rl", 5, "sampled", 0.405, 11.3, 0.007), rec("colar_rl", 5, "greedy", 0.405, 11.3),
           rec("colar_unseen", 6, "greedy", 0.2, 9.4),
           rec("colar", 5, "sampled", 0.37, 11.32, 0.006), rec("colar", 5, "greedy", 0.373, 11.34),
           rec("colar_text", 1, "greedy", 1.0, 54.8), rec("colar_135", 4, "greedy", 0.5, 14.0),
           rec("colar", 2, "greedy", 1.0, 27.9),
           rec("colar_dl", 5, "greedy", 0.3, 11.0), rec("colar_dl", 2, "greedy", 0.9, 28.0),
           rec("colar_oc", 2, "greedy", 0.8, 28.0), rec("colar_mp", 2, "greedy", 0.7, 28.0),
           rec("colar_nll", 2, "greedy", 0.6, 28.0),
           rec("cot", 1, "sampled", 1.0, 54.8, 0.0), rec("cot", 1, "greedy", 1.0, 54.76),
           rec("nocot", 0, "sampled", 0.175, 0.0, 0.011), rec("nocot", 0, "greedy", 0.182, 0.0)]


def test_table_row_order_and_labels():
    rows = [(r[0], r[1]) for r in body(table(RECORDS))]
    assert rows == [("No-CoT", "0"), ("CoT", "1"), ("CoLaR", "2"), ("CoLaR", "5"),
                    ("CoLaR-DL", "2"), ("CoLaR-DL", "5"), ("CoLaR-MP", "2"), ("CoLaR-NLL", "2"), ("CoLaR-OC", "2"),
                    ("CoLaR + RL", "5"), ("CoLaR writing text", "1"), ("CoLaR trained on c in {1, 3, 5}", "4"),
                    ("colar_unseen", "6")]  # a method without a label comes last, by its own name


def test_table_cells():
    md = table(RECORDS)
    assert md.splitlines()[0] == ("| method | c | accuracy, sampled (%) | accuracy, greedy (%) | #L, sampled "
                                  "| #L, greedy |")
    rows = {(r[0], r[1]): r[2:] for r in body(md)}
    assert rows[("CoLaR", "5")] == ["37.0 ± 0.6", "37.3", "11.3", "11.3"]
    assert rows[("No-CoT", "0")] == ["17.5 ± 1.1", "18.2", "0.0", "0.0"]
    assert rows[("CoT", "1")] == ["100.0 ± 0.0", "100.0", "54.8", "54.8"]
    assert rows[("CoLaR + RL", "5")] == ["40.5 ± 0.7", "40.5", "11.3", "11.3"]
    with_len_ci = dict(rec("colar", 5, "sampled", 0.608, 11.3291, 0.0104), len_ci95=0.0512)
    assert body(table([with_len_ci]))[0][2:] == ["60.8 ± 1.0", "–", "11.3 ± 0.1", "–"]


def test_spread_over_training_runs_hand_worked(tmp_path, capsys):
    runs = [[rec("cot", 1, "greedy", 0.98, 52.0), rec("cot", 1, "sampled", 0.97, 52.0, 0.010),
             rec("colar", 2, "greedy", 0.50, 26.0), rec("nocot", 0, "greedy", 0.01, 0.0)],
            [rec("cot", 1, "greedy", 0.96, 52.0), rec("cot", 1, "sampled", 0.95, 52.0, 0.020),
             rec("colar", 2, "greedy", 0.70, 27.0)],  # no No-CoT: that row is left out
            [rec("cot", 1, "greedy", 1.00, 52.0), rec("cot", 1, "sampled", 0.99, 52.0, 0.030),
             rec("colar", 2, "greedy", 0.60, 28.0), rec("colar", 2, "sampled", 0.6, 28.0, 0.01)]]
    md = spread_table(runs)
    assert "over 3 training runs" in md.splitlines()[0]
    # means 98.0, 97.0, ci (1 + 2 + 3) / 3 = 2.0; CoLaR: (50 + 70 + 60) / 3 = 60.0, #L (26 + 27 + 28) / 3 = 27.0,
    # sampled in one run only: a dash
    assert body(md) == [["CoT", "1", "98.0 (96.0–100.0)", "97.0 (95.0–99.0)", "2.0", "52.0"],
                        ["CoLaR", "2", "60.0 (50.0–70.0)", "–", "–", "27.0"]]
    paths = []
    for i, r in enumerate(runs):
        paths.append(str(tmp_path / f"run{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(r, f)
    out = str(tmp_path / "spread.md")
    text = main(ReportConfig(results=paths[0], training_runs=",".join(paths[1:]), md=out))
    assert text.startswith(md) and open(out).read() == text + "\n"


def test_versus_table_pairs_each_baseline_with_the_nearest_speed():
    records = [rec("colar", c, d, acc, n) for c, acc, n in ((1, 0.99, 60.0), (2, 0.97, 30.0), (5, 0.80, 12.0))
               for d in ("greedy", "sampled")]
    records += [rec("coconut", 0, "greedy", 0.40, 6.0), rec("coconut", 0, "sampled", 0.38, 6.0),
                rec("icot", 0, "greedy", 0.90, 0.0), rec("distill", 0, "greedy", 0.55, 21.5)]
    got = body(versus_table(records))
    # Coconut (#L 6) is nearest c = 5 (#L 12), sampled; iCoT (#L 0) too, greedy (it has no sampled record); Distill
    # (#L 21.5) is 8.5 from c = 2's 30 and 9.5 from c = 5's 12: c = 2; each CoLaR speed there thinks longer
    assert got == [["Coconut", "6.0", "38.0", "5", "12.0", "80.0", "+42.0 (sampled)", "no"],
                   ["iCoT", "0.0", "90.0", "5", "12.0", "80.0", "-10.0 (greedy)", "no"],
                   ["Distill (CODI)", "21.5", "55.0", "2", "30.0", "97.0", "+42.0 (greedy)", "no"]]
    # a baseline thinking 14 is nearest c = 5 (#L 12), which is shorter; equal lengths count as not longer
    colar = [r for r in records if r["method"] == "colar" and r["decode"] == "greedy"]
    shorter = [rec("pause", 0, "greedy", 0.5, 14.0), rec("coconut", 0, "greedy", 0.5, 30.0)]
    assert [row[0] + row[3] + row[-1] for row in body(versus_table(colar + shorter))] == [
        "Coconut2yes", "Pause as thought5yes"]
    # a difference that rounds to zero is written +0.0, whichever side is ahead by less than 0.05 points
    nil = [rec("colar", 5, "greedy", 0.0, 12.0), rec("distill", 0, "greedy", 0.0004, 6.0)]
    assert body(versus_table(nil))[0][6] == "+0.0 (greedy)"
    assert versus_table([rec("coconut", 0, "greedy", 0.4, 6.0)]) == ""  # no CoLaR rows: no comparison


def test_plot_labels_speeds_but_not_baselines():
    assert [point_label(m, c) for m, c in (("colar", 5), ("cot", 1), ("nocot", 0), ("coconut", 0), ("icot", 1))] == [
        "c=5", "c=1", "c=0", "", ""]


def test_baselines_have_no_speed():
    md = table([rec("coconut", 0, "greedy", 0.5, 6.0), rec("pause", 0, "greedy", 0.25, 6.0)])
    assert body(md) == [["Coconut", "–", "–", "50.0", "–", "6.0"],
                        ["Pause as thought", "–", "–", "25.0", "–", "6.0"]]


def test_table_missing_values():
    records = [rec("colar", 3, "greedy", 0.998, 18.6),                 # no sampled record
               rec("cot", 1, "sampled", 0.994, 54.8, 0.002),           # no greedy record
               rec("colar", 4, "sampled", 0.5, 14.0, None)]            # one seed: no interval
    rows = {(r[0], r[1]): r[2:] for r in body(table(records))}
    assert rows[("CoLaR", "3")] == ["–", "99.8", "–", "18.6"]
    assert rows[("CoT", "1")] == ["99.4 ± 0.2", "–", "54.8", "–"]
    assert rows[("CoLaR", "4")] == ["50.0", "–", "14.0", "–"]


def test_a_row_never_joins_two_checkpoints():
    """A row's greedy and sampled cells come from one checkpoint on one set of questions: a greedy record of a
    retrained model left beside the old model's sampled one (or one on 100 questions) is refused, naming both."""
    greedy, sampled = rec("colar", 2, "greedy", 0.9, 28.0), rec("colar", 2, "sampled", 0.5, 28.0, 0.01)
    same = [dict(greedy, checkpoint_sha256="a" * 64), dict(sampled, checkpoint_sha256="a" * 64)]
    assert body(table(same))[0][2:4] == ["50.0 ± 1.0", "90.0"]
    with pytest.raises(UserError, match=r"colar at c = 2 measure different checkpoints or questions \(greedy "
                                        r"aaaaaaaaaaaa on 1000, sampled bbbbbbbbbbbb on 1000\)"):
        table([same[0], dict(sampled, checkpoint_sha256="b" * 64)])
    with pytest.raises(UserError, match="sampled aaaaaaaaaaaa on 100"):
        table([same[0], dict(same[1], n=100)])
    assert body(table([same[0], dict(same[1], checkpoint_sha256="b" * 64, split="val")]))[0][3] == "90.0"  # val
    # one checkpoint, as many questions, but other questions (another data folder): refused where both say which
    with_q = [dict(r, settings={"questions_sha256": q}) for r, q in zip(same, "cd")]
    with pytest.raises(UserError, match="measure different checkpoints or questions"):
        table(with_q)
    assert body(table([with_q[0], same[1]]))[0][2:4] == ["50.0 ± 1.0", "90.0"]  # a record without the hash: as before


def test_table_keeps_only_its_split():
    records = [rec("cot", 1, "greedy", 0.9, 50.0, split="val"), rec("cot", 1, "greedy", 1.0, 54.8),
               rec("nocot", 0, "greedy", 0.2, 0.0, split="val")]
    assert body(table(records)) == [["CoT", "1", "–", "100.0", "–", "54.8"]]
    assert body(table(records, split="val")) == [["No-CoT", "0", "–", "20.0", "–", "0.0"],
                                                 ["CoT", "1", "–", "90.0", "–", "50.0"]]
    assert body(table(records, split="train")) == []


def test_load_records_concatenates(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(RECORDS[:2]))
    b.write_text(json.dumps(RECORDS[2:5]))
    assert load_records([str(a), str(b)]) == RECORDS[:5]


@pytest.mark.parametrize("content, words", [(None, "cannot read"), ("[{\"method\": ", "not valid JSON"),
                                            ('{"method": "cot"}', "JSON list"),
                                            ('[{"method": "cot", "c": 1}]', "record 0: a record lacks decode"),
                                            (json.dumps([{**RECORDS[0], "accuracy": "high"}]),  # a format error
                                             'record 0: a record\'s accuracy is "high"'),
                                            (json.dumps([{**RECORDS[0], "method": ["cot"]}]),  # unhashable
                                             'record 0: a record\'s method is ["cot"]')])
def test_load_records_errors_name_the_file(tmp_path, content, words):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as e:
        load_records([str(path)])
    assert str(path) in str(e.value) and words in str(e.value)


def test_cli_writes_markdown_and_skips_the_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(RECORDS[:8]))
    b.write_text(json.dumps(RECORDS[8:]))
    md, png = tmp_path / "out" / "r.md", tmp_path / "r.png"
    assert plot(RECORDS, str(png)) is False
    main(ReportConfig(results=f"{a},{b}", md=str(md), png=str(png)))
    out = capsys.readouterr().out
    assert "plot skipped" in out and "pip install matplotlib" in out and not png.exists()
    text = md.read_text()
    assert table(RECORDS) in text and f"From {a}, {b}." in text
    assert "DL = deterministic latents" in text and "OC = no CE labels at the compressed positions" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(main, ReportConfig(results=str(tmp_path / "none.json")))
    assert e.value.code == 2 and "none.json" in capsys.readouterr().err
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECORDS))
    with pytest.raises(SystemExit):
        run_cli(main, ReportConfig(results=str(path), split="val"))
    assert "no records of the val split" in capsys.readouterr().err


def test_cli_never_writes_over_what_it_reads(tmp_path, capsys):
    """--md or --png naming a records file read (--results, --reference, --training_runs) replaced the records with
    the table; refused in one line, the file untouched. --training_runs has no plot or reference: refused, not
    silently dropped. A plot with no records to draw, or in a format matplotlib does not write, is refused before the
    table is written."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(RECORDS))
    b.write_text(json.dumps(RECORDS))
    for cfg, words in [(dict(md=str(a)), f"--md {a} is one of the records files read"),
                       (dict(png=str(tmp_path / "." / "a.json")), "--png"),
                       (dict(md=str(b), reference=str(b)), f"--md {b} is one of the records files read"),
                       (dict(md=str(b), training_runs=str(b)), f"--md {b} is one of the records files read"),
                       (dict(md=str(tmp_path / "t.png"), png=str(tmp_path / "t.png")), "name the same file"),
                       (dict(md=str(tmp_path / "t.md"), png=str(tmp_path / "t.xyz")),  # after the table was written
                        f"--png {tmp_path / 't.xyz'}: a picture ends in one of .png, .pdf, .svg"),
                       (dict(training_runs=str(b), png=str(tmp_path / "s.png")), "has no plot or reference column"),
                       (dict(training_runs=str(b), reference=str(b)), "has no plot or reference column"),
                       (dict(md=str(tmp_path / "t.md"), png=str(tmp_path / "s.png"), decode="sampled", split="val"),
                        "no records of the val split")]:
        with pytest.raises(SystemExit) as e:
            run_cli(main, ReportConfig(results=str(a), **cfg))
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, (cfg, err)
    assert json.loads(a.read_text()) == RECORDS and json.loads(b.read_text()) == RECORDS
    assert not (tmp_path / "t.md").exists()
    val = tmp_path / "val.json"
    val.write_text(json.dumps([rec("cot", 1, "greedy", 1.0, 54.8, split="val")]))
    with pytest.raises(SystemExit):  # greedy records only: nothing to plot sampled, and no table written either
        run_cli(main, ReportConfig(results=str(val), split="val", md=str(tmp_path / "t.md"),
                                   png=str(tmp_path / "s.png")))
    assert "no sampled records of the val split to plot" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "r.png"
    assert plot(RECORDS, str(path), decode="greedy") is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError):  # sampled decoding, but the val split has no records
        plot(RECORDS, str(path), split="val")


def test_reference_column_and_footnote(tmp_path, monkeypatch):
    """A run's records beside a reference run's: the column holds the reference's accuracy for the same (method, c),
    sampled or else greedy; a row the reference lacks shows a dash, and the reference's own rows are not added."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    mine, ref = tmp_path / "mine.json", tmp_path / "ref.json"
    mine.write_text(json.dumps([rec("colar", 5, "sampled", 0.9, 11.3, 0.01), rec("colar", 5, "greedy", 0.92, 11.3),
                                rec("colar", 2, "greedy", 1.0, 27.9), rec("colar_rl", 5, "greedy", 0.95, 11.3)]))
    ref.write_text(json.dumps([rec("colar", 5, "sampled", 0.951, 11.3, 0.002), rec("colar", 5, "greedy", 0.96, 11.3),
                               rec("colar", 2, "greedy", 0.998, 27.9), rec("cot", 1, "greedy", 1.0, 54.8)]))
    text = main(ReportConfig(results=str(mine), reference=str(ref)))
    md = text.split("\n\n")[0]
    assert md.splitlines()[0].endswith("| #L, greedy | reference, sampled (%) |")
    assert body(md) == [["CoLaR", "2", "–", "100.0", "–", "27.9", "99.8 (greedy)"],
                        ["CoLaR", "5", "90.0 ± 1.0", "92.0", "11.3", "11.3", "95.1 ± 0.2"],
                        ["CoLaR + RL", "5", "–", "95.0", "–", "11.3", "–"]]
    assert f"From {mine}. The reference column is from {ref}, another training run" in text
    assert "over the sampling seeds of that run only" in text
    plain = main(ReportConfig(results=str(mine)))  # without --reference, the table as before
    assert plain.startswith(table(json.loads(mine.read_text()))) and "reference column" not in plain


def test_plot_with_a_reference(tmp_path, monkeypatch):
    """The reference's points are drawn for the (method, c) this run has, sampled: of RECORDS[:4], CoLaR c = 5
    (#L 11.32, 37.0%) and CoLaR + RL c = 5 (11.3, 40.5%), in the table's order; its greedy-only rows are not."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes
    drawn, scatter = {}, Axes.scatter

    def spy(ax, x, y, **kw):
        drawn[kw.get("label")] = (list(x), list(y))
        return scatter(ax, x, y, **kw)
    monkeypatch.setattr(Axes, "scatter", spy)
    path = tmp_path / "r.png"
    assert plot(RECORDS, str(path), reference=RECORDS[:4], reference_label="reference (r.json)") is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    xs, ys = drawn["reference (r.json)"]
    assert xs == [11.32, 11.3] and ys == pytest.approx([37.0, 40.5])
