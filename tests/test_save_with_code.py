"""A saved model carries its modeling code: it loads with only sentence-transformers installed, from its folder
and by Hub id from an offline cache, and embeds exactly as the model that saved it. The same holds for the embedded
default model, as shipped, published and re-saved by plain sentence-transformers.

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
from umarvel_st.cli import main
from umarvel_st.testing import BLOCK_UMARVEL_ST, install_in_hub_cache, make_test_image

CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"
EMBEDDED = Path(umarvel_st.__file__).parent / "assets" / "umarvel-demo"
REPO_ID = "org/u-marvel"
SOURCE_FILES = ["backbones.py", "encoder.py", "inputs.py", "pooling.py", "remote_code.py", "video.py"]
PROMPT_NAME = "cirr_task7"

# Runs without umarvel_st: argv = plan.json, output folder. The plan holds the items and the loads to run in order:
# {"name": ..., "source": folder or Hub id, "save_to": optional folder to save the loaded model to}.
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

plan_file, out = sys.argv[1:]
plan = json.load(open(plan_file))
items = plan["items"]
report = {"blocked": blocked}
for load in plan["loads"]:
    scenario = load["name"]
    model = SentenceTransformer(load["source"], trust_remote_code=True)
    if load.get("save_to"):
        model.save(load["save_to"])
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


def load_without_umarvel_st(root: Path, items: dict[str, Any], loads: list[dict[str, str]]) -> dict[str, Any]:
    """Run ``loads`` in a subprocess where umarvel_st cannot be imported, offline, with the Hub cache under
    ``root / "hf_home"``; return the report with each load's embeddings of ``items``."""
    hf_home = root / "hf_home"
    (root / "plan.json").write_text(json.dumps({"items": items, "loads": loads}))
    (root / "out").mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
    }
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(root / "plan.json"), str(root / "out")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((root / "out" / "report.json").read_text())
    for load in loads:
        for kind in ("documents", "queries"):
            report[load["name"]][kind] = np.load(root / "out" / f"{load['name']}-{kind}.npy")
    report["modules_cache"] = hf_home / "modules"
    return report


@pytest.fixture(scope="module")
def loaded(saved: dict[str, Any]) -> dict[str, Any]:
    """Load the saved model in a subprocess without umarvel_st: from its folder, re-saved, and by Hub id."""
    root = saved["root"]
    snapshot = install_in_hub_cache(saved["folder"], root / "hf_home" / "hub", REPO_ID)
    loads = [
        {"name": "folder", "source": str(saved["folder"]), "save_to": str(root / "resaved")},
        {"name": "resaved", "source": str(root / "resaved")},
        {"name": "hub", "source": REPO_ID},
    ]
    return {**load_without_umarvel_st(root, saved["items"], loads), "snapshot": snapshot}


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


REFRESH_EMBEDDED_CODE = "make assets"


def test_embedded_model_ships_the_current_modeling_code_under_flat_types() -> None:
    modules = json.loads((EMBEDDED / "modules.json").read_text())
    assert [module["type"] for module in modules][:2] == [
        "encoder.UMarvelTransformer",
        "pooling.InstructionMaskedMeanPooling",
    ]
    for name in SOURCE_FILES:
        shipped, current = EMBEDDED / name, CHECKPOINT.parents[1] / "modeling" / name
        assert shipped.is_file() and shipped.read_bytes() == current.read_bytes(), (
            f"The embedded model's {name} differs from umarvel_st/modeling/{name}; refresh its code copies from "
            f"the repository root with: {REFRESH_EMBEDDED_CODE}"
        )


def test_published_and_plainly_resaved_default_load_without_umarvel_st(tmp_path: Path) -> None:
    """The embedded default, published (dry run) and loaded by Hub id, and loaded by plain sentence-transformers
    and saved again (as its trainer does), loads with one line where umarvel_st is missing, embedding exactly as
    the package does."""
    from sentence_transformers import SentenceTransformer

    assert main(["publish", str(EMBEDDED), REPO_ID, "--dry-run", str(tmp_path / "repo")]) == 0
    install_in_hub_cache(tmp_path / "repo", tmp_path / "hf_home" / "hub", REPO_ID)
    SentenceTransformer(str(EMBEDDED), trust_remote_code=True).save(str(tmp_path / "plain"))
    items = _items(tmp_path)
    model = umarvel_st.load(EMBEDDED)
    expected = {
        "documents": model.encode_document(items["documents"]),
        "queries": model.encode_query(items["queries"], prompt_name=PROMPT_NAME),
    }

    report = load_without_umarvel_st(
        tmp_path, items, [{"name": "hub", "source": REPO_ID}, {"name": "plain", "source": str(tmp_path / "plain")}]
    )

    assert report["blocked"] and report["umarvel_st_modules"] == []
    for scenario in ("hub", "plain"):
        assert report[scenario]["classes"] == ["UMarvelTransformer", "InstructionMaskedMeanPooling", "Normalize"]
        np.testing.assert_array_equal(report[scenario]["documents"], expected["documents"])
        np.testing.assert_array_equal(report[scenario]["queries"], expected["queries"])
