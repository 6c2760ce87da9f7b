"""`umarvel demo` says what it does while it works, names the k of each Recall@k and, with a re-ranker, shows
U-MARVEL+ beside retrieval as the evaluator scores it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import umarvel_st
from umarvel_st.cli import main
from umarvel_st.data.mbeir import MBEIRTask
from umarvel_st.data.synthetic import TASKS, make_synthetic_mbeir
from umarvel_st.demo import DEFAULT_MODEL, DEFAULT_RERANKER, EXAMPLE_TASKS
from umarvel_st.evaluation.mbeir_evaluator import MBEIREvaluator
from umarvel_st.testing import BLOCK_UMARVEL_ST, make_test_image

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


def test_demo_re_ranks_with_the_embedded_reranker_unless_told_not_to(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert DEFAULT_RERANKER == Path(umarvel_st.__file__).parent / "assets" / "umarvel-demo-reranker"
    make_synthetic_mbeir(tmp_path / "data", test_queries=1, train_queries=1, pool_size=4, show_progress_bar=False)
    assert main(["demo", "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert f"re-ranker: {DEFAULT_RERANKER}" in out and re.search(r"^task .* retrieval +re-ranked +chance$", out, re.M)
    assert main(["demo", "--data", str(tmp_path / "data"), "--no-rerank"]) == 0
    out = capsys.readouterr().out
    assert "re-ranked" not in out and "P(Yes)" not in out
    with pytest.raises(SystemExit):
        main(["demo", "--no-rerank", "--rerank", str(TINY_RERANKER)])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--rerank 'no/such/folder/x' is not an existing folder"):
        main(["demo", "--data", str(tmp_path / "data"), "--rerank", "no/such/folder/x"])
    with pytest.raises(ValueError, match="rerank_top must be an integer >= 1"):
        main(["demo", "--data", str(tmp_path / "data"), "--rerank", str(TINY_RERANKER), "--rerank-top", "0"])


# Runs without umarvel_st: argv = re-ranker folder, pairs.json, output .npy.
SCORE_SCRIPT = (
    BLOCK_UMARVEL_ST
    + r"""
import json
import sys

import numpy as np
from sentence_transformers import CrossEncoder

folder, pairs_file, out = sys.argv[1:]
pairs = [tuple(pair) for pair in json.load(open(pairs_file))]
np.save(out, CrossEncoder(folder, trust_remote_code=True).predict(pairs, batch_size=2))
"""
)


def test_the_embedded_reranker_ships_the_current_code_and_scores_the_same_without_umarvel_st(tmp_path: Path) -> None:
    modeling = Path(umarvel_st.__file__).parent / "modeling"
    shipped = sorted(DEFAULT_RERANKER.glob("*.py"))
    assert "reranker.py" in [file.name for file in shipped]
    for file in shipped:
        assert file.read_bytes() == (modeling / file.name).read_bytes(), (
            f"The embedded re-ranker's {file.name} differs from umarvel_st/modeling/{file.name}; refresh its code "
            "copies from the repository root with: make assets"
        )
    make_test_image(64, 64, seed=3).save(tmp_path / "scene.png")
    query = {"text": "a picture of a circle in crimson in the middle", "instruction": "Which image shows the shapes?"}
    pairs = [(query, {"text": "a red circle at the center"}), (query, {"image": str(tmp_path / "scene.png")})]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    command = [sys.executable, "-c", SCORE_SCRIPT, str(DEFAULT_RERANKER), str(tmp_path / "pairs.json")]
    subprocess.run([*command, str(tmp_path / "scores.npy")], check=True, timeout=300)
    expected = umarvel_st.load_reranker(DEFAULT_RERANKER, device="cpu").predict(pairs, batch_size=2)
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=1e-6)
