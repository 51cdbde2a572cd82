"""The README's claims that drift silently: its file table (every file it names exists, with the number of lines
given), the links between README.md and EXPERIMENTS.md (every #anchor names a heading of its file) and the
multiplication ladder it quotes (the one demo.py runs).

Run: .venv/bin/python -m pytest tests/test_docs.py
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "EXPERIMENTS.md")


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def slug(heading):
    """GitHub's anchor of a heading: lower case, characters other than letters, digits, `-`, `_` and spaces
    dropped, each space a `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_by_hand():
    assert slug("2026-12-01: 4x4 at c = 2, RL +3.9") == "2026-12-01-4x4-at-c--2-rl-39"
    assert slug("How it works") == "how-it-works"


def test_the_file_table_names_files_with_their_line_counts():
    rows = re.findall(r"^(\S+\.py)\s+(\d+)  ", read("README.md"), flags=re.M)
    assert len(rows) >= 15  # the table is there
    for name, count in rows:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert sum(1 for _ in f) == int(count), name


def test_links_between_the_docs_name_headings_that_exist():
    anchors = {name: {slug(h) for h in re.findall(r"^## (.+)$", read(name), flags=re.M)} for name in DOCS}
    links = 0
    for name in DOCS:
        for target, anchor in re.findall(r"\]\(((?:README|EXPERIMENTS)\.md)?#([^)\s]+)\)", read(name)):
            assert anchor in anchors[target or name], f"{name}: {target or name}#{anchor}"
            links += 1
    assert links >= 10


def test_the_ladder_the_readme_quotes_is_the_demos():
    """The README names the stages `demo.py --task mult4` trains one speed at a time; a change to the preset must
    show there too."""
    import demo
    quoted = re.findall(r'--colar_stages "([^"]+)"', read("README.md"))
    assert quoted and all(" ".join(q.split()) == demo.LADDER for q in quoted)
