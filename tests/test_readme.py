"""The README's results block is generated from committed files, and a planted wrong number fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rga.readme import (BEGIN, END, INSIDE_BEGIN, INSIDE_END, ReadmeCheckError, check_readme, render_inside,
                        render_results, replace_block)

REPO = Path(__file__).resolve().parents[1]


def test_readme_results_block_matches_the_committed_experiment():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    check_readme(readme, render_results(REPO))  # raises, naming the numbers, when they differ


def test_a_planted_wrong_number_fails_the_check():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = render_results(REPO)
    start = readme.index(BEGIN)
    m = re.search(r"ΔPACC (\d+\.\d) ± ", readme[start:])
    assert m, "the block quotes a ΔPACC mean"
    planted = str(round(float(m.group(1)) + 7.3, 1))
    i = start + m.start(1)
    wrong = readme[:i] + planted + readme[i + len(m.group(1)):]
    with pytest.raises(ReadmeCheckError, match=rf"numbers no committed file gives: .*{re.escape(planted)}"):
        check_readme(wrong, block)


def test_missing_markers_and_replacement():
    block = f"{BEGIN}\nGA ΔPACC 1.0\n{END}\n"
    with pytest.raises(ReadmeCheckError, match="no generated block"):
        check_readme("# README without a block\n", block)
    text = f"intro\n{BEGIN}\nold 2.0\n{END}\noutro\n"
    new = replace_block(text, block)
    assert new == f"intro\n{BEGIN}\nGA ΔPACC 1.0\n{END}\noutro\n"
    check_readme(new, block)


def test_readme_inside_rga_table_is_the_committed_experiment_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = render_inside(REPO)
    check_readme(readme, block, INSIDE_BEGIN, INSIDE_END)
    # a changed number in the copied table fails, naming it
    i = readme.index(INSIDE_BEGIN)
    m = re.search(r"\| (\d+\.\d) \| ", readme[i:])
    wrong = readme[:i + m.start(1)] + "99.9" + readme[i + m.end(1):]
    with pytest.raises(ReadmeCheckError, match=r"numbers no committed file gives: .*99\.9"):
        check_readme(wrong, block, INSIDE_BEGIN, INSIDE_END)


def test_inside_rga_table_is_what_its_committed_sources_give():
    """table.md (copied into the README) is rebuilt from the experiment folders and the committed
    default run's metrics and curves: a stale table, or one edited by hand, fails."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("inside_rga_collect", REPO / "experiments" / "inside-rga" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    assert collect.document() == (REPO / "experiments" / "inside-rga" / "table.md").read_text(encoding="utf-8")
    assert collect.attack_of("llama2-7b-sst2-addsent-1") == "addsent"
