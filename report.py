"""
The results report from evaluate.py's JSON records: a Markdown table and a plot of accuracy against reasoning length.
The table follows the CoLaR paper's Table 1 (accuracy and mean reasoning length #L per method and speed c, sampled
and greedy); the plot shows each (method, c) as a point, with the Pareto front. With --reference, the records of
another run (the committed results/demo.json) are shown beside them: a column of the table and grey hollow points.

    python report.py --results results/demo.json --md results/demo.md --png results/demo.png
    python report.py --results out/results/demo.json --reference results/demo.json   # your run beside the reference
    python report.py --results results/demo.json,results/rl.json --split test   # several files, read together

The plot needs matplotlib, an optional dependency (`pip install matplotlib`); without it the table is still written.
"""
import os
from dataclasses import dataclass

from baselines import BASELINES
from common import (UserError, check_flags, check_picture, check_writable, parse_config, read_json, record_problem,
                    run_cli)

# the table's methods, in its order, with their labels; any other method follows them, labelled by its own name
LABELS = {"nocot": "No-CoT", "cot": "CoT", "colar": "CoLaR", "colar_ladder": "CoLaR, one speed at a time",
          "colar_dl": "CoLaR-DL", "colar_mp": "CoLaR-MP", "colar_nll": "CoLaR-NLL", "colar_oc": "CoLaR-OC",
          "colar_rl": "CoLaR + RL", "colar_text": "CoLaR writing text",
          "colar_135": "CoLaR trained on c in {1, 3, 5}", "coconut": "Coconut", "pause": "Pause as thought",
          "icot": "iCoT", "distill": "Distill (CODI)"}
ABLATIONS = {"colar_dl": "DL = deterministic latents", "colar_mp": "MP = mean pooling",
             "colar_nll": "NLL = NLL latent loss",
             "colar_oc": "OC = no CE labels at the compressed positions (--chunk_labels false)"}
FIELDS = ("method", "c", "decode", "split", "n", "accuracy", "mean_len")
DASH = "–"


def load_records(paths):
    """The records of one or more evaluate.py JSON files, concatenated in order; a missing or malformed file is a
    UserError that names it."""
    records = []
    for path in paths:
        data = read_json(path, "results file")
        if not isinstance(data, list):
            raise UserError(f"results file {path} should hold a JSON list of records, not a {type(data).__name__}")
        for i, r in enumerate(data):
            problem = record_problem(r, FIELDS)
            if problem:
                raise UserError(f"results file {path}: record {i}: {problem}")
        records += data
    return records


def rows(records, split="test"):
    """{(method, c): {decode: record}} for the records of `split`, in the table's order: the methods of LABELS, then
    the others in order of appearance; speeds ascending. A later record replaces an earlier one with the same key.
    A row's greedy and sampled records must measure one checkpoint on the same questions (a row is never two runs):
    the same checkpoint bytes, number of questions and, where both records hold it, hash of the questions."""
    found = {}
    for r in records:
        if r["split"] == split:
            found.setdefault((r["method"], r["c"]), {})[r["decode"]] = r
    questions = lambda r: (r.get("settings") or {}).get("questions_sha256")  # noqa: E731  (None: not recorded)
    for (method, c), by_decode in found.items():
        if (len({(r.get("checkpoint_sha256"), r["n"]) for r in by_decode.values()}) > 1
                or len({questions(r) for r in by_decode.values()} - {None}) > 1):
            what = ", ".join(f"{d} {str(r.get('checkpoint_sha256'))[:12]} on {r['n']}"
                             + (f" ({questions(r)[:12]})" if questions(r) else "") for d, r in by_decode.items())
            raise UserError(f"the {split} records of {method} at c = {c} measure different checkpoints or questions "
                            f"({what}): evaluate that checkpoint again with both decodings")
    others = list(dict.fromkeys(m for m, _ in found if m not in LABELS))
    rank = lambda m: list(LABELS).index(m) if m in LABELS else len(LABELS) + others.index(m)  # noqa: E731
    return dict(sorted(found.items(), key=lambda kv: (rank(kv[0][0]), kv[0][1])))


def cells(by_decode):
    """The four number cells of one row: accuracy sampled (mean ± ci95) and greedy in %, #L sampled (mean ± its
    ci95, when recorded) and greedy."""
    s, g = by_decode.get("sampled"), by_decode.get("greedy")
    acc_s = DASH if s is None else f"{100 * s['accuracy']:.1f}"
    if s is not None and s.get("ci95") is not None:
        acc_s += f" ± {100 * s['ci95']:.1f}"
    acc_g = DASH if g is None else f"{100 * g['accuracy']:.1f}"
    len_s = DASH if s is None else f"{s['mean_len']:.1f}"
    if s is not None and s.get("len_ci95") is not None:
        len_s += f" ± {s['len_ci95']:.1f}"
    return [acc_s, acc_g, len_s, DASH if g is None else f"{g['mean_len']:.1f}"]


def reference_cell(by_decode):
    """The reference run's accuracy for one row: sampled (mean ± ci95) in %, else greedy, marked so; a dash when the
    reference has neither."""
    acc_s, acc_g = cells(by_decode)[:2]
    return acc_s if "sampled" in by_decode else acc_g if acc_g == DASH else f"{acc_g} (greedy)"


def table(records, split="test", reference=None):
    """A Markdown table, one row per (method, c) of the records of `split`; a missing value shows as a dash. With
    `reference` (another run's records) a last column holds its accuracy for the same (method, c)."""
    lines = ["| method | c | accuracy, sampled (%) | accuracy, greedy (%) | #L, sampled | #L, greedy |",
             "|---|---:|---:|---:|---:|---:|"]
    ref = None if reference is None else rows(reference, split)
    if ref is not None:
        lines = [lines[0] + " reference, sampled (%) |", lines[1] + "---:|"]
    for (method, c), by_decode in rows(records, split).items():
        extra = [] if ref is None else [reference_cell(ref.get((method, c), {}))]
        speed = DASH if method in BASELINES else str(c)  # a baseline has no speed
        lines.append("| " + " | ".join([LABELS.get(method, method), speed] + cells(by_decode) + extra) + " |")
    return "\n".join(lines)


def versus_table(records, split="test"):
    """The paper's comparison: each baseline beside CoLaR at the speed whose #L is nearest the baseline's (sampled
    decoding where both have it, else greedy), and whether that CoLaR speed thinks no longer than the baseline (the
    paper's claim is about equal or shorter chains); "" when the records hold no baseline or no CoLaR."""
    found = rows(records, split)
    colar = {c: r for (m, c), r in found.items() if m == "colar"}
    lines = ["| baseline | #L | accuracy (%) | CoLaR at c | #L | accuracy (%) | CoLaR - baseline (points) "
             "| CoLaR's #L <= baseline's |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for (method, _), base in found.items():
        if method not in BASELINES or not colar:
            continue
        decode = "sampled" if "sampled" in base and all("sampled" in r for r in colar.values()) else "greedy"
        if decode not in base or not all(decode in r for r in colar.values()):
            continue
        b = base[decode]
        c, mine = min(((c, r[decode]) for c, r in colar.items()),
                      key=lambda cr: abs(cr[1]["mean_len"] - b["mean_len"]))  # the first of equally near speeds
        lines.append(f"| {LABELS.get(method, method)} | {b['mean_len']:.1f} | {100 * b['accuracy']:.1f} | {c} | "
                     f"{mine['mean_len']:.1f} | {100 * mine['accuracy']:.1f} | "
                     f"{round(100 * (mine['accuracy'] - b['accuracy']), 1) or 0.0:+.1f} ({decode}) | "  # never "-0.0"
                     f"{'yes' if mine['mean_len'] <= b['mean_len'] else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def spread_table(runs, split="test"):
    """One row per (method, c) that every run has (each run: the records of one trained model, the same recipe with
    another training seed): greedy and sampled accuracy as the mean over the runs with their range, the runs' mean
    sampling half-width (the spread within one model) and the mean greedy #L."""
    per_run = [rows(r, split) for r in runs]
    lines = [f"| method | c | accuracy, greedy (%): mean (range) over {len(runs)} training runs | "
             f"accuracy, sampled (%): mean (range) | sampling ± within a run (%) | #L, greedy |",
             "|---|---:|---:|---:|---:|---:|"]

    def spread(key, decode, field="accuracy", scale=100.0, with_range=True):
        xs = [scale * run[key][decode][field] for run in per_run
              if decode in run[key] and run[key][decode].get(field) is not None]
        if len(xs) < len(runs):
            return DASH
        return f"{sum(xs) / len(xs):.1f}" + (f" ({min(xs):.1f}–{max(xs):.1f})" if with_range else "")
    for key in per_run[0]:
        if all(key in run for run in per_run):
            cols = [spread(key, "greedy"), spread(key, "sampled"), spread(key, "sampled", "ci95", with_range=False),
                    spread(key, "greedy", "mean_len", 1.0, with_range=False)]
            lines.append("| " + " | ".join([LABELS.get(key[0], key[0]), str(key[1])] + cols) + " |")
    return "\n".join(lines)


def pareto_front(points):
    """The (mean_len, accuracy) points that no other point dominates (one as short or shorter and as accurate or more,
    and strictly better in one of the two), sorted by length; equal points do not dominate each other."""
    points = [tuple(p) for p in points]
    return sorted(p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points))


def point_label(method, c):
    """A plotted point's label: its speed, except for a baseline, which has none (the table writes a dash)."""
    return "" if method in BASELINES else f"c={c}"


def plot(records, path, split="test", decode="sampled", reference=None, reference_label="reference"):
    """Accuracy against #L, one labelled point per (method, c) and one colour and marker per method, with the Pareto
    front as a step line, written as a PNG to `path`; with `reference` (another run's records), its points for the
    same (method, c) as grey hollow circles. Returns False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = [(r[decode]["mean_len"], 100 * r[decode]["accuracy"], m, c)
              for (m, c), r in rows(records, split).items() if decode in r]
    if not points:
        raise UserError(f"no {decode} records of the {split} split to plot (try --decode greedy)")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(dict.fromkeys(p[2] for p in points)):
        mine = [p for p in points if p[2] == method]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], color=f"C{i % 10}", marker="os^Dv<>PX*"[i % 10],
                   label=LABELS.get(method, method), zorder=3)
        for x, y, _, c in mine:
            if label := point_label(method, c):
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if reference is not None:
        ref = rows(reference, split)
        theirs = [ref[m, c][decode] for _, _, m, c in points if decode in ref.get((m, c), {})]
        ax.scatter([r["mean_len"] for r in theirs], [100 * r["accuracy"] for r in theirs], facecolors="none",
                   edgecolors="grey", s=80, zorder=2.5, label=reference_label)
    front = pareto_front([p[:2] for p in points])
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="grey", linestyle="--", zorder=2,
            label="Pareto front")
    ax.set_xlabel("mean reasoning length (#L: tokens or latents)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy against reasoning length ({split} split, {decode} decoding)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


@dataclass
class ReportConfig:
    results: str = "results/demo.json"  # evaluate.py JSON file(s), comma-separated
    split: str = "test"                 # the split to report: train, val or test
    md: str = ""                        # write the table as Markdown to this file (e.g. results/demo.md)
    png: str = ""                       # write the accuracy-vs-#L plot to this PNG file (needs matplotlib)
    decode: str = "sampled"             # the plot's decoding: sampled or greedy
    reference: str = ""                 # another run's records, shown beside these (e.g. results/demo.json)
    training_runs: str = ""             # records of the same recipe trained with other seeds, comma-separated: the
                                        # table becomes the spread over the training runs (--results and these)


def main(cfg):
    check_flags(cfg, dict(decode=("sampled", "greedy")))
    paths = [p.strip() for p in cfg.results.split(",") if p.strip()]
    if not paths:
        raise UserError("--results names no file")
    others = [p.strip() for p in cfg.training_runs.split(",") if p.strip()]
    if others and (cfg.png or cfg.reference):
        raise UserError("--training_runs makes the table of the spread over training runs alone: it has no plot or "
                        "reference column; leave out --png and --reference")
    inputs = [p for p in paths + others + [cfg.reference] if p and os.path.exists(p)]
    for flag, path, check in (("--md", cfg.md, check_writable), ("--png", cfg.png, check_picture)):
        if path:
            check(path, flag)
            if os.path.exists(path) and any(os.path.samefile(path, p) for p in inputs):
                raise UserError(f"{flag} {path} is one of the records files read: writing it would destroy them")
    if cfg.md and cfg.png and os.path.realpath(cfg.md) == os.path.realpath(cfg.png):
        raise UserError(f"--md and --png name the same file, {cfg.md}")
    records = load_records(paths)
    reference = load_records([cfg.reference]) if cfg.reference else None
    for path, recs in [(", ".join(paths), records)] + [(p, load_records([p])) for p in others]:
        if not any(r["split"] == cfg.split for r in recs):
            splits = sorted({r["split"] for r in recs})
            raise UserError(f"no records of the {cfg.split} split in {path} (splits there: {splits})")
    if others:
        runs = [records] + [load_records([p]) for p in others]
        return write_table(cfg, spread_table(runs, cfg.split) + f"\n\n{cfg.split} split; each of the {len(runs)} "
                           f"runs is one trained model of the same recipe ({', '.join(paths + others)}); the sampling "
                           f"± is the mean over the runs of each one's 95% t-interval half-width over its sampling "
                           f"seeds.")
    notes = [ABLATIONS[m] for m in ABLATIONS if any(r["method"] == m and r["split"] == cfg.split for r in records)]
    text = (table(records, cfg.split, reference) + f"\n\n{cfg.split} split; sampled accuracy is the mean over the "
            f"sampling seeds of one trained model ± the half-width of its 95% t-interval (not a spread over training "
            f"runs); #L is the mean reasoning length (chain tokens or latents)"
            + "".join(f"; {n}" for n in notes) + f". From {', '.join(paths)}."
            + (f" The reference column is from {cfg.reference}, another training run: its ± is over the sampling "
               f"seeds of that run only, not over training runs." if cfg.reference else ""))
    if cfg.png and not any(cfg.decode in r for r in rows(records, cfg.split).values()):  # before the table is written
        raise UserError(f"no {cfg.decode} records of the {cfg.split} split to plot (try --decode greedy)")
    versus = versus_table(records, cfg.split)
    if versus:
        text += ("\n\nEach latent baseline beside CoLaR at the speed whose #L is nearest its own (the paper's "
                 "comparison):\n\n" + versus)
    write_table(cfg, text)
    if cfg.png:
        if plot(records, cfg.png, cfg.split, cfg.decode, reference, f"reference ({cfg.reference})"):
            print(f"plot written to {cfg.png}")
        else:
            print("plot skipped: matplotlib is not installed (pip install matplotlib, or pip install .[plot])")
    return text


def write_table(cfg, text):
    """Print the table with its notes, and write it to --md when given (whole or not at all: a temporary file, then
    renamed over it)."""
    print(text)
    if cfg.md:
        os.makedirs(os.path.dirname(cfg.md) or ".", exist_ok=True)
        with open(cfg.md + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(cfg.md + ".tmp", cfg.md)
        print(f"table written to {cfg.md}")
    return text


if __name__ == "__main__":
    run_cli(main, parse_config(ReportConfig))
