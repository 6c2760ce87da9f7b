"""A saved model carries its modeling code: it loads with only sentence-transformers installed, from its folder
and by Hub id from an offline cache, and embeds exactly as the model that saved it.

The loads run in one subprocess (importing torch there takes most of the time) in which a ``sys.meta_path``
finder makes every ``umarvel_st`` import fail. sentence-transformers silently builds a plain Transformer + mean
pooling model from a folder whose ``modules.json`` it cannot find, so the tests check the loaded module classes
and exact embeddings, not just that loading worked.
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

import umarvel_st
from umarvel_st.testing import BLOCK_UMARVEL_ST, install_in_hub_cache, make_test_image

CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"
REPO_ID = "org/u-marvel"
SOURCE_FILES = ["backbones.py", "encoder.py", "inputs.py", "pooling.py", "remote_code.py"]
PROMPT_NAME = "cirr_task7"

# Runs without umarvel_st: argv = items.json, model folder, re-save folder, Hub id, output folder.
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
from sentence_transformers import SentenceTransformer

items_file, folder, resaved, repo_id, out = sys.argv[1:]
items = json.load(open(items_file))
report = {"blocked": blocked}
for scenario, source in (("folder", folder), ("resaved", resaved), ("hub", repo_id)):
    model = SentenceTransformer(source, trust_remote_code=True)
    if scenario == "folder":
        model.save(resaved)
    np.save(f"{out}/{scenario}-documents.npy", model.encode_document(items["documents"]))
    np.save(f"{out}/{scenario}-queries.npy", model.encode_query(items["queries"], prompt_name=items["prompt_name"]))
    report[scenario] = {
        "classes": [type(module).__name__ for module in model],
        "code_file": type(model[0]).forward.__code__.co_filename,
    }
report["umarvel_st_modules"] = sorted(name for name in sys.modules if name.startswith("umarvel_st"))
json.dump(report, open(f"{out}/report.json", "w"))
"""
)


def _items(image_dir: Path) -> dict[str, Any]:
    """Text, image and image+text items; images as files, so the subprocess needs no umarvel_st to make them."""
    red, blue = image_dir / "red.png", image_dir / "blue.png"
    make_test_image(84, 56, seed=1).save(red)
    make_test_image(56, 84, seed=2).save(blue)
    return {
        "documents": ["a small red square", {"image": str(red)}, {"text": "a blue circle", "image": str(blue)}],
        "queries": [{"text": "make it blue", "image": str(red)}, "a small red square"],
        "prompt_name": PROMPT_NAME,
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bundled checkpoint as a from_mllm model, saved, with its in-process embeddings of the test items."""
    root = tmp_path_factory.mktemp("save_with_code")
    model = umarvel_st.from_mllm(str(CHECKPOINT.resolve()))
    items = _items(root)
    model.save(str(root / "saved"))
    return {
        "root": root,
        "folder": root / "saved",
        "items": items,
        "documents": model.encode_document(items["documents"]),
        "queries": model.encode_query(items["queries"], prompt_name=PROMPT_NAME),
    }


@pytest.fixture(scope="module")
def loaded(saved: dict[str, Any]) -> dict[str, Any]:
    """Load the saved model in a subprocess without umarvel_st: from its folder, re-saved, and by Hub id."""
    root = saved["root"]
    hf_home = root / "hf_home"
    snapshot = install_in_hub_cache(saved["folder"], hf_home / "hub", REPO_ID)
    (root / "items.json").write_text(json.dumps(saved["items"]))
    (root / "out").mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
    }
    args = [root / "items.json", saved["folder"], root / "resaved", REPO_ID, root / "out"]
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
        for kind in ("documents", "queries"):
            report[scenario][kind] = np.load(root / "out" / f"{scenario}-{kind}.npy")
    report["snapshot"] = snapshot
    report["modules_cache"] = hf_home / "modules"
    return report


def test_saved_folder_holds_flat_code_and_no_local_paths(saved: dict[str, Any]) -> None:
    folder = saved["folder"]
    modules = json.loads((folder / "modules.json").read_text())
    assert [module["type"] for module in modules] == [
        "encoder.UMarvelTransformer",
        "pooling.InstructionMaskedMeanPooling",
        "sentence_transformers.base.modules.normalize.Normalize",
    ]
    for name in SOURCE_FILES:
        assert (folder / name).read_bytes() == (CHECKPOINT.parents[1] / "modeling" / name).read_bytes(), name
    local_paths = {str(saved["root"]), str(CHECKPOINT.resolve()), str(Path(umarvel_st.__file__).parents[1])}
    for file in folder.rglob("*"):
        if file.is_file():
            content = file.read_bytes()
            assert not [path for path in local_paths if path.encode() in content], file


def test_loads_from_its_folder_without_umarvel_st(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    assert loaded["blocked"] and loaded["umarvel_st_modules"] == []
    result = loaded["folder"]
    assert result["classes"] == ["UMarvelTransformer", "InstructionMaskedMeanPooling", "Normalize"]
    assert Path(result["code_file"]).is_relative_to(loaded["modules_cache"])  # the saved copy of encoder.py ran
    np.testing.assert_array_equal(result["documents"], saved["documents"])
    np.testing.assert_array_equal(result["queries"], saved["queries"])


def test_a_reloaded_model_saves_its_code_again(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    result = loaded["resaved"]
    assert result["classes"] == ["UMarvelTransformer", "InstructionMaskedMeanPooling", "Normalize"]
    np.testing.assert_array_equal(result["documents"], saved["documents"])
    np.testing.assert_array_equal(result["queries"], saved["queries"])


def test_loads_by_hub_id_offline_without_umarvel_st(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    result = loaded["hub"]
    assert result["classes"] == ["UMarvelTransformer", "InstructionMaskedMeanPooling", "Normalize"]
    assert loaded["snapshot"].name in Path(result["code_file"]).parts  # code from the cached snapshot's revision
    np.testing.assert_array_equal(result["documents"], saved["documents"])
    np.testing.assert_array_equal(result["queries"], saved["queries"])


def test_install_in_hub_cache_lays_out_a_snapshot(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "modules.json").write_text("[]")
    (model / "sub" / "config.json").write_text("{}")

    snapshot = install_in_hub_cache(model, tmp_path / "hub", "acme/embedder")

    repo = tmp_path / "hub" / "models--acme--embedder"
    assert snapshot.parent == repo / "snapshots" and len(snapshot.name) == 40
    assert int(snapshot.name, 16) >= 0 and (repo / "refs" / "main").read_text() == snapshot.name
    assert (snapshot / "sub" / "config.json").read_text() == "{}"
    assert install_in_hub_cache(model, tmp_path / "hub2", "acme/embedder").name == snapshot.name
    (model / "modules.json").write_text("[{}]")
    assert install_in_hub_cache(model, tmp_path / "hub3", "acme/embedder").name != snapshot.name


@pytest.mark.parametrize("repo_id", ["u-marvel", "org/", "org/a/b"])
def test_install_in_hub_cache_rejects_a_bad_repo_id(tmp_path: Path, repo_id: str) -> None:
    with pytest.raises(ValueError, match="org/name"):
        install_in_hub_cache(tmp_path, tmp_path / "hub", repo_id)


def test_a_built_model_stays_picklable_for_multi_process_encoding() -> None:
    import pickle

    model = umarvel_st.from_mllm(str(CHECKPOINT))
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.encode(["a red square"]), model.encode(["a red square"]))


def test_load_uses_installed_classes_and_runs_no_folder_code(tmp_path: Path) -> None:
    """``umarvel_st.load`` restores a saved model without ``trust_remote_code``: the folder's code never runs."""
    from sentence_transformers import SentenceTransformer

    model = umarvel_st.from_mllm(str(CHECKPOINT), summarize_suffix=False, max_pixels=64 * 28 * 28)
    model.save(str(tmp_path))
    (tmp_path / "encoder.py").write_text("raise RuntimeError('folder code ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path))  # plain sentence-transformers refuses the custom types
    loaded = umarvel_st.load(tmp_path)
    assert type(loaded[0]) is type(model[0])
    assert loaded[0].summarize_suffix is False and loaded[0].max_pixels == 64 * 28 * 28
    items = ["a red square", make_test_image(56, 84, seed=1)]
    np.testing.assert_array_equal(loaded.encode_document(items), model.encode_document(items))
