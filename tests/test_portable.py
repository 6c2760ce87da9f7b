"""The portable export: only built-in sentence-transformers modules, loads without trust_remote_code, attention made
bidirectional through the backbone config (verified here, also for a batch of one), drift measured and reported."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import umarvel_st
from umarvel_st.cli import main
from umarvel_st.hub.portable import measure_drift

CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("portable")
    umarvel_st.from_mllm(str(CHECKPOINT)).save(str(root / "exact"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # no -v: what a user sees by default
        code = main(
            ["publish", str(root / "exact"), "org/u-marvel-portable", "--portable", "--dry-run", str(root / "repo")]
        )
    assert code == 0
    return {"root": root, "repo": root / "repo", "printed": printed.getvalue()}


def test_portable_folder_has_only_builtin_modules_and_loads_without_remote_code(exported: dict[str, Any]) -> None:
    repo = exported["repo"]
    types = [entry["type"] for entry in json.loads((repo / "modules.json").read_text())]
    assert all(name.startswith("sentence_transformers.") for name in types), types
    assert not list(repo.glob("*.py"))  # no code travels with it
    model = SentenceTransformer(str(repo))
    assert [type(module).__name__ for module in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].get_config_dict()["pooling_mode"] == "mean" and model.similarity_fn_name == "dot"
    assert json.loads((repo / "config.json").read_text())["text_config"]["is_causal"] is False


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_is_bidirectional_through_the_config(exported: dict[str, Any], tmp_path: Path, is_causal) -> None:
    """The first token's state changes with the last word only under bidirectional attention (batch of one)."""
    repo = exported["repo"]
    if is_causal:  # control: the same folder with a causal config
        import shutil

        repo = Path(shutil.copytree(repo, tmp_path / "causal"))
        config = json.loads((repo / "config.json").read_text())
        config["text_config"]["is_causal"] = True
        (repo / "config.json").write_text(json.dumps(config))
    model = SentenceTransformer(str(repo))
    first = [
        model.encode([text], output_value="token_embeddings", batch_size=1)[0][0]
        for text in ("a red square here", "a red square there")
    ]
    assert np.allclose(first[0], first[1], atol=1e-6) == is_causal


def test_drift_is_measured_printed_and_written(exported: dict[str, Any]) -> None:
    drift = json.loads((exported["repo"] / "drift.json").read_text())
    assert drift["items"] == 22 and -1 <= drift["min"] <= drift["mean"] < 1  # not exact
    assert f"on 22 sample items: mean {drift['mean']:.4f}, min {drift['min']:.4f}" in exported["printed"]
    exact = umarvel_st.load(exported["root"] / "exact")
    again = measure_drift(exact, SentenceTransformer(str(exported["repo"])))
    assert again["mean"] == pytest.approx(drift["mean"], abs=1e-5) and again["min"] == pytest.approx(
        drift["min"], abs=1e-5
    )
    assert f"mean {drift['mean']:.4f}, minimum {drift['min']:.4f}" in (exported["repo"] / "README.md").read_text()
