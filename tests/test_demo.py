"""`umarvel demo` says what it does while it works, names the k of each Recall@k and, with a re-ranker, shows
U-MARVEL+ beside retrieval as the evaluator scores it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import umarvel_st
from umarvel_st.cli import main
from umarvel_st.data.mbeir import MBEIRTask
from umarvel_st.data.synthetic import TASKS, make_synthetic_mbeir
from umarvel_st.demo import DEFAULT_MODEL, DEFAULT_RERANKER, EXAMPLE_TASKS
from umarvel_st.evaluation.mbeir_evaluator import MBEIREvaluator

TINY_RERANKER = Path(umarvel_st.__file__).parent / "assets" / "tiny-rerank-qwen2vl"  # a raw MLLM with its LM head


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


def _table(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"\w+_task\d +[a-z,]+ -> ", line)}


def test_demo_with_a_reranker_shows_retrieval_and_reranked_recall_as_the_evaluator_scores_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    make_synthetic_mbeir(data, test_queries=3, train_queries=1, pool_size=12, image_size=32, show_progress_bar=False)
    options = ["--rerank-top", "12", "--rerank-weight", "10"]
    assert main(["demo", "--data", str(data), "--rerank", str(TINY_RERANKER), *options]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^task .* retrieval +re-ranked +chance$", out, re.M)
    expected = MBEIREvaluator(
        data, split="test", pool="local", reranker=TINY_RERANKER, rerank_top=12, rerank_weight=10,
        show_progress_bar=False,
    ).evaluate(umarvel_st.load(DEFAULT_MODEL))  # fmt: skip
    rows = _table(out)
    assert sorted(rows) == sorted(TASKS)
    for name, row in expected["tasks"].items():
        retrieval, reranked = rows[name][-3:-1]
        assert (retrieval, reranked) == (f"{100 * row['score']:.1f}%", f"{100 * row['rerank']['score']:.1f}%")
    average = next(line for line in out.splitlines() if line.startswith("average")).split()[1:]
    assert average == [f"{100 * expected['average']:.1f}%", f"{100 * expected['rerank']['average']:.1f}%"]
    # A weight this large lets P(Yes) reorder the hits: the re-ranked example hits are shown with their parts.
    assert out.count("re-ranked (cos + 10 * P(Yes)):") == 2 * len(EXAMPLE_TASKS)
    assert re.search(r"^    1\.[* ] [+-]\d\.\d{3} \(cos [+-]\d\.\d{3}, P\(Yes\) \d\.\d{3}\) ", out, re.M)
    assert any(row["rerank"]["score"] != row["score"] for row in expected["tasks"].values())

    # DEFAULT_RERANKER is used without --rerank once it is set; while it is None the demo only retrieves.
    monkeypatch.setattr("umarvel_st.demo.DEFAULT_RERANKER", TINY_RERANKER)
    assert main(["demo", "--data", str(data), *options]) == 0
    assert _table(capsys.readouterr().out) == rows


def test_demo_without_a_reranker_only_retrieves(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert DEFAULT_RERANKER is None  # the lead sets it when a demo re-ranker ships
    make_synthetic_mbeir(tmp_path / "data", test_queries=1, train_queries=1, pool_size=4, show_progress_bar=False)
    assert main(["demo", "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "re-ranked" not in out and "P(Yes)" not in out
    with pytest.raises(ValueError, match="--rerank 'no/such/folder/x' is not an existing folder"):
        main(["demo", "--data", str(tmp_path / "data"), "--rerank", "no/such/folder/x"])
    with pytest.raises(ValueError, match="rerank_top must be an integer >= 1"):
        main(["demo", "--data", str(tmp_path / "data"), "--rerank", str(TINY_RERANKER), "--rerank-top", "0"])
