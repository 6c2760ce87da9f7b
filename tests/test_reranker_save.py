"""A saved re-ranker carries its modeling code: ``CrossEncoder(folder_or_hub_id, trust_remote_code=True)`` loads it
with only sentence-transformers installed and scores exactly as the model that saved it.

The loads run in one subprocess in which every ``umarvel_st`` import fails (see ``tests/test_save_with_code.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_reranker import CHECKPOINT, REF, fixture_pairs  # tests/ is on sys.path (pytest rootdir mode)

import umarvel_st
from umarvel_st.testing import BLOCK_UMARVEL_ST, install_in_hub_cache

REPO_ID = "org/u-marvel-reranker"
SOURCE_FILES = ["reranker.py", "backbones.py", "inputs.py", "remote_code.py"]

# Runs without umarvel_st: argv = pairs.json, model folder, re-save folder, Hub id, output folder.
LOAD_SCRIPT = (
    BLOCK_UMARVEL_ST
    + r"""
import json
import sys

try:
    import umarvel_st  # noqa: F401
    blocked = False
except ImportError:
    blocked = True

import numpy as np
from sentence_transformers import CrossEncoder

pairs_file, folder, resaved, repo_id, out = sys.argv[1:]
pairs = [tuple(pair) for pair in json.load(open(pairs_file))]
report = {"blocked": blocked}
for scenario, source in (("folder", folder), ("resaved", resaved), ("hub", repo_id)):
    model = CrossEncoder(source, trust_remote_code=True)
    if scenario == "folder":
        model.save(resaved)
    np.save(f"{out}/{scenario}.npy", model.predict(pairs, batch_size=4))
    report[scenario] = {
        "classes": [type(module).__name__ for module in model],
        "activation": type(model.activation_fn).__name__,
        "code_file": type(model[0]).forward.__code__.co_filename,
        "rank": model.rank(pairs[0][0], [pair[1] for pair in pairs], top_k=2),
    }
report["umarvel_st_modules"] = sorted(name for name in sys.modules if name.startswith("umarvel_st"))
json.dump(report, open(f"{out}/report.json", "w"))
"""
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("reranker_save")
    model = umarvel_st.reranker_from_mllm(str(CHECKPOINT.resolve()), max_pixels=100 * 28 * 28)
    model.save(str(root / "saved"))
    pairs = fixture_pairs()
    return {"root": root, "folder": root / "saved", "pairs": pairs, "scores": model.predict(pairs, batch_size=4)}


@pytest.fixture(scope="module")
def loaded(saved: dict[str, Any]) -> dict[str, Any]:
    root = saved["root"]
    hf_home = root / "hf_home"
    snapshot = install_in_hub_cache(saved["folder"], hf_home / "hub", REPO_ID)
    (root / "pairs.json").write_text(json.dumps(saved["pairs"]))
    (root / "out").mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
    }
    args = [root / "pairs.json", saved["folder"], root / "resaved", REPO_ID, root / "out"]
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *map(str, args)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((root / "out" / "report.json").read_text())
    for scenario in ("folder", "resaved", "hub"):
        report[scenario]["scores"] = np.load(root / "out" / f"{scenario}.npy")
    report["snapshot"] = snapshot
    report["modules_cache"] = hf_home / "modules"
    return report


def test_saved_folder_holds_flat_types_code_and_options(saved: dict[str, Any]) -> None:
    folder = saved["folder"]
    modules = json.loads((folder / "modules.json").read_text())
    assert [module["type"] for module in modules] == [
        "reranker.UMarvelRerankerTransformer",
        "sentence_transformers.cross_encoder.modules.logit_score.LogitScore",
    ]
    for name in SOURCE_FILES:
        assert (folder / name).read_bytes() == (Path(umarvel_st.__file__).parent / "modeling" / name).read_bytes()
    options = json.loads((folder / "sentence_bert_config.json").read_text())
    assert options["max_pixels"] == 100 * 28 * 28 and options["position_mode"] == "mrope"
    assert options["padding_side"] == "left" and options["item_separator"] == ""
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["activation_fn"].endswith("Sigmoid")


def test_loads_from_its_folder_without_umarvel_st(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    assert loaded["blocked"] and loaded["umarvel_st_modules"] == []
    result = loaded["folder"]
    assert result["classes"] == ["UMarvelRerankerTransformer", "LogitScore"] and result["activation"] == "Sigmoid"
    assert Path(result["code_file"]).is_relative_to(loaded["modules_cache"])  # the saved copy of reranker.py ran
    np.testing.assert_array_equal(result["scores"], saved["scores"])
    np.testing.assert_allclose(result["scores"], REF, rtol=0, atol=1e-5)


def test_rank_after_loading_matches(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    model = umarvel_st.load_reranker(saved["folder"])
    pairs = saved["pairs"]
    expected = model.rank(pairs[0][0], [pair[1] for pair in pairs], top_k=2)
    for scenario in ("folder", "hub"):
        got = loaded[scenario]["rank"]
        assert [hit["corpus_id"] for hit in got] == [hit["corpus_id"] for hit in expected]
        np.testing.assert_allclose([hit["score"] for hit in got], [hit["score"] for hit in expected], atol=1e-6)


def test_a_reloaded_reranker_saves_its_code_again(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    assert loaded["resaved"]["classes"] == ["UMarvelRerankerTransformer", "LogitScore"]
    np.testing.assert_array_equal(loaded["resaved"]["scores"], saved["scores"])


def test_loads_by_hub_id_offline_without_umarvel_st(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    result = loaded["hub"]
    assert result["classes"] == ["UMarvelRerankerTransformer", "LogitScore"]
    assert loaded["snapshot"].name in Path(result["code_file"]).parts
    np.testing.assert_array_equal(result["scores"], saved["scores"])


def test_load_reranker_uses_installed_classes_and_runs_no_folder_code(saved: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from sentence_transformers import CrossEncoder

    folder = tmp_path / "copy"
    shutil.copytree(saved["folder"], folder)
    (folder / "reranker.py").write_text("raise RuntimeError('folder code ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        CrossEncoder(str(folder))
    model = umarvel_st.load_reranker(folder)
    assert type(model) is umarvel_st.reranker.UMarvelCrossEncoder and model[0].max_pixels == 100 * 28 * 28
    np.testing.assert_array_equal(model.predict(saved["pairs"], batch_size=4), saved["scores"])
