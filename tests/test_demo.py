"""`umarvel demo` says what it does while it works and names the k of each Recall@k."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from umarvel_st.cli import main
from umarvel_st.data.mbeir import MBEIRTask
from umarvel_st.data.synthetic import TASKS, make_synthetic_mbeir


def test_demo_reports_each_step_and_the_k_of_each_row(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    make_synthetic_mbeir(tmp_path / "data", test_queries=2, train_queries=1, pool_size=4, show_progress_bar=False)
    assert main(["demo", "--data", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    steps = [line for line in lines if re.match(r"\[\d/4\] ", line)]
    assert [step[:5] for step in steps] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert lines.index(steps[-1]) < next(i for i, line in enumerate(lines) if line.startswith("task "))
    assert "Encoding" in captured.err  # progress bars while encoding
    rows = {line.split()[0]: line for line in lines if re.match(r"\w+_task\d +[a-z,]+ -> [a-z,]+ ", line)}
    assert sorted(rows) == sorted(TASKS)
    for name, row in rows.items():
        assert f" Recall@{MBEIRTask.from_name(name).k} " in row
    assert "Recall@k" not in captured.out.replace("Recall@k: share of queries", "")  # only in the legend


def test_demo_help_describes_the_retrieval_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "held-out synthetic queries" in text and "Recall@k" in text and "similarity table" not in text


def test_writing_the_benchmark_shows_progress(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    make_synthetic_mbeir(tmp_path, test_queries=1, train_queries=1, pool_size=4, image_size=32)
    assert "Writing the synthetic benchmark: 100%|" in capsys.readouterr().err
