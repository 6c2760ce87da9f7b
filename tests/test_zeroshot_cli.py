"""``umarvel make-synthetic --zeroshot`` and ``umarvel eval zeroshot`` end to end on the tiny backbone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    (tmp_path / "report.txt").write_text("")
    with pytest.raises(ValueError, match="report.txt' is a file, not a folder"):
        main(
            [
                "eval",
                "zeroshot",
                "--task",
                "msvd",
                "--data",
                str(tmp_path),
                "--model",
                str(tmp_path),
                "--output",
                str(tmp_path / "report.txt"),
            ]
        )


def test_long_captions_are_not_truncated(tmp_path: Path, tiny_backbone_factory: Callable[..., Path]) -> None:
    from umarvel_st.evaluation.zeroshot.cli import evaluate
    from umarvel_st.model import open_model

    root = tmp_path / "sharegpt4v"
    (root / "val_data").mkdir(parents=True)
    long = " ".join(["a red circle on a light background"] * 60)  # ~1450 tokens: beyond the default 1024
    rows = [{"image_name": f"{i}.png", "caption": long + tail} for i, tail in enumerate([" red", " blue"])]
    for row in rows:
        Image.new("RGB", (56, 56), (200, 30, 30)).save(root / "val_data" / row["image_name"])
    (root / "datas_for_validation.json").write_text(json.dumps(rows))
    model = open_model(tiny_backbone_factory("qwen2_vl"), device="cpu")
    evaluate(model, ["sharegpt4v"], tmp_path, tmp_path / "cache", show_progress_bar=False)
    queries = np.load(tmp_path / "cache" / "sharegpt4v" / "queries" / "shard-00000.npy")
    assert not np.allclose(queries[0], queries[1])  # the last word still counts
    assert model[0].max_seq_length == 1024  # restored afterwards


def test_legacy_causal_flag_encodes_videos_one_at_a_time_causally(
    tmp_path: Path, tiny_backbone_factory: Callable[..., Path]
) -> None:
    from umarvel_st.evaluation.zeroshot.cli import evaluate
    from umarvel_st.model import open_model

    data = tmp_path / "zs"
    assert main(["make-synthetic", "--zeroshot", str(data)]) == 0
    model = open_model(tiny_backbone_factory("qwen2_vl"), device="cpu")
    for legacy, cache in (((), "plain"), (("causal_unpadded",), "causal")):
        results = evaluate(model, ["msrvtt"], data, tmp_path / cache, legacy=legacy, show_progress_bar=False)
        assert results["legacy"] == list(legacy)
    assert model[0].legacy_causal_unpadded is False  # restored after the task
    plain, causal = (
        np.load(tmp_path / cache / "msrvtt" / "candidates" / "shard-00000.npy") for cache in ("plain", "causal")
    )
    assert np.abs(plain - causal).max(axis=1).min() > 1e-3  # every video embedding changed
