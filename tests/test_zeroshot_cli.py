"""``umarvel make-synthetic --zeroshot`` and ``umarvel eval zeroshot`` end to end on the tiny backbone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from umarvel_st.cli import main
from umarvel_st.evaluation.zeroshot.tasks import TASKS


def test_whole_suite_runs_end_to_end_and_resumes(
    tmp_path: Path, tiny_backbone_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, output = tmp_path / "zs", tmp_path / "out"
    assert main(["make-synthetic", "--zeroshot", str(data)]) == 0
    model = str(tiny_backbone_factory("qwen2_vl"))
    command = ["eval", "zeroshot", "--suite", "paper", "--data", str(data), "--model", model, "--output", str(output)]
    assert main([*command, "--device", "cpu", "--no-progress-bar"]) == 0
    results = json.loads((output / "results.json").read_text())
    assert set(results["tasks"]) == set(TASKS)
    assert results["groups"]["genecis"]["subsets"] == 4 and results["groups"]["sugar_crepe"]["paper"] == 87.9
    assert all(0.0 <= value <= 1.0 for row in results["tasks"].values() for value in row["scores"].values())
    report = (output / "report.md").read_text()
    assert "| flickr30k | t2i |" in report and "| 85.4 |" in report and "legacy flags on: none" in report
    assert (output / "report.png").stat().st_size > 0
    shard = output / "embeddings" / "msvd" / "candidates" / "shard-00000.npy"
    before = shard.stat().st_mtime_ns
    assert main([*command, "--task", "msvd", "--device", "cpu", "--no-progress-bar"]) == 0
    assert shard.stat().st_mtime_ns == before  # cached embeddings reused, not encoded again
    assert "msvd" in capsys.readouterr().out


def test_task_names_are_checked_before_loading_the_model(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "zeroshot", "--task", "coco", "--data", str(tmp_path), "--model", str(tmp_path)])
    with pytest.raises(ValueError, match="--task NAME"):
        main(["eval", "zeroshot", "--data", str(tmp_path), "--model", str(tmp_path)])
