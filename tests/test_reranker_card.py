"""``umarvel publish`` on a re-ranker folder: its own card (text-ranking, the prompt, P(Yes)) whose Python blocks run
as written from an offline Hub cache without umarvel_st, and a folder that loads with only sentence-transformers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_reranker import CHECKPOINT  # tests/ is on sys.path

import umarvel_st
from umarvel_st.cli import main
from umarvel_st.hub.publish import write_repo_folder
from umarvel_st.modeling.reranker import RERANK_PROMPT
from umarvel_st.testing import BLOCK_UMARVEL_ST, install_in_hub_cache

REPO_ID = "org/u-marvel-reranker"
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
RUN_CARD = (
    BLOCK_UMARVEL_ST
    + r"""
import re
import sys

namespace = {}
blocks = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE).findall(open(sys.argv[1]).read())
for index, block in enumerate(blocks):
    exec(compile(block, f"card:block{index}", "exec"), namespace)
print("classes", [type(module).__name__ for module in namespace["model"]], "scores", len(namespace["scores"]))
"""
)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reranker_card")
    model = umarvel_st.reranker_from_mllm(str(CHECKPOINT))
    model.save(str(root / "saved"))
    assert main(["publish", str(root / "saved"), REPO_ID, "--dry-run", str(root / "repo"), "--base-model", "a/b"]) == 0
    return {"root": root, "repo": root / "repo", "model": model}


def test_card_says_what_it_scores(published: dict[str, Any]) -> None:
    card = (published["repo"] / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["pipeline_tag"] == "text-ranking" and metadata["base_model"] == "a/b"
    assert RERANK_PROMPT in card and "P(Yes)" in card and f'CrossEncoder("{REPO_ID}", trust_remote_code=True)' in card
    assert ".rank(" in card
    for name in ("reranker.py", "inputs.py", "modules.json", "model.safetensors", "assets/img_shapes_112x56.png"):
        assert (published["repo"] / name).is_file(), name


def test_card_code_runs_as_written_from_the_hub_cache(published: dict[str, Any]) -> None:
    root = published["root"]
    hf_home = root / "hf_home"
    install_in_hub_cache(published["repo"], hf_home / "hub", REPO_ID)
    assert len(CODE_BLOCK.findall((published["repo"] / "README.md").read_text())) == 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    result = subprocess.run(
        [sys.executable, "-c", RUN_CARD, str(published["repo"] / "README.md")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "classes ['UMarvelRerankerTransformer', 'LogitScore'] scores 2" in result.stdout


def test_publishing_a_reranker_refuses_embedder_only_options(published: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="re-ranker is published merged and exact"):
        write_repo_folder(published["model"], tmp_path / "repo", REPO_ID, portable=True)
