"""`umarvel publish`: the exact repository folder (dry run, offline), pushing through a mocked HfApi, and LoRA
models published merged or as an adapter repo naming their base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import umarvel_st
from umarvel_st.cli import main
from umarvel_st.hub.publish import publish, write_repo_folder
from umarvel_st.train.lora import apply_lora

CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"
REPO_ID = "org/u-marvel"
ITEMS = ["a red square", {"text": "a red block", "image": Image.new("RGB", (56, 56), (200, 30, 30))}]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("publish") / "saved"
    umarvel_st.from_mllm(str(CHECKPOINT)).save(str(folder))
    return folder


def files_of(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_dry_run_writes_the_exact_repo_folder_without_local_paths(saved: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert main(["publish", str(saved), REPO_ID, "--dry-run", str(repo), "--base-model", "org/base"]) == 0

    files = files_of(repo)
    expected = {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_InstructionMaskedMeanPooling/config.json",
        "encoder.py",
        "pooling.py",
        "inputs.py",
        "backbones.py",
        "remote_code.py",
        "handler.py",
        "README.md",
        "assets/img_shapes_112x56.png",
    }
    assert expected <= files, expected - files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth"))]  # safetensors only
    assert [entry["type"] for entry in json.loads((repo / "modules.json").read_text())][:2] == [
        "encoder.UMarvelTransformer",
        "pooling.InstructionMaskedMeanPooling",
    ]
    for file in repo.rglob("*"):
        if file.is_file():
            content = file.read_bytes()
            assert not [p for p in (str(saved), str(tmp_path), str(CHECKPOINT.resolve())) if p.encode() in content]
    assert "base_model: org/base" in (repo / "README.md").read_text()


class FakeHfApi:
    """Records the calls publish makes and what the uploaded folder held at upload time."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", {**kwargs, "files": files_of(Path(kwargs["folder_path"]))}))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_push_creates_the_repo_and_uploads_the_folder(saved: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)

    assert main(["publish", str(saved), REPO_ID, "--private"]) == 0

    names = [name for name, _ in FakeHfApi.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    create, upload = FakeHfApi.calls[1][1], FakeHfApi.calls[2][1]
    assert create == {"repo_id": REPO_ID, "private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["repo_id"] == REPO_ID and upload["repo_type"] == "model"
    assert {"model.safetensors", "handler.py", "README.md", "encoder.py", "modules.json"} <= upload["files"]
    assert not Path(upload["folder_path"]).exists()  # written to a scratch folder, removed after the push
    assert f"Pushed {REPO_ID}: https://huggingface.co/{REPO_ID}/commit/abc" in capsys.readouterr().out


def test_a_lora_model_is_merged_before_publishing(tmp_path: Path) -> None:
    model = apply_lora(umarvel_st.from_mllm(str(CHECKPOINT)), r=4, alpha=8)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # a trained adapter changes the embeddings
    with_adapter = model.encode(ITEMS)

    repo = publish(model, REPO_ID, dry_run=tmp_path / "repo")

    assert not (repo / "adapter_config.json").exists() and (repo / "model.safetensors").is_file()
    reloaded = umarvel_st.from_mllm(str(repo))
    np.testing.assert_allclose(reloaded.encode(ITEMS), with_adapter, atol=1e-5)
    assert not np.allclose(umarvel_st.from_mllm(str(CHECKPOINT)).encode(ITEMS), with_adapter, atol=1e-3)


def test_an_adapter_repo_names_its_base_model(tmp_path: Path) -> None:
    model = apply_lora(umarvel_st.from_mllm(str(CHECKPOINT)), r=4, alpha=8)

    repo = write_repo_folder(model, tmp_path / "repo", REPO_ID, adapter_base_model="org/u-marvel-base")

    adapter_config = json.loads((repo / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "org/u-marvel-base"
    assert (repo / "adapter_model.safetensors").is_file() and not (repo / "model.safetensors").exists()
    assert "base_model: org/u-marvel-base" in (repo / "README.md").read_text()


@pytest.mark.parametrize(
    ("repo_id", "prepare", "message"),
    [("u-marvel", None, "org/name"), (REPO_ID, "occupied", "not an empty folder")],
)
def test_bad_repo_id_or_occupied_folder_is_refused(tmp_path: Path, repo_id: str, prepare, message: str) -> None:
    folder = tmp_path / "repo"
    if prepare:
        folder.mkdir()
        (folder / "x").write_text("x")
    with pytest.raises(ValueError, match=message):
        write_repo_folder(CHECKPOINT, folder, repo_id)


def test_publish_runs_no_code_from_the_model_folder(saved: Path, tmp_path: Path) -> None:
    """The folder is loaded with the installed classes: its (here booby-trapped) code copies never run, and the
    published repo carries the package's own code."""
    import shutil

    folder = Path(shutil.copytree(saved, tmp_path / "untrusted"))
    (folder / "encoder.py").write_text("raise RuntimeError('code from the model folder ran')\n")

    repo = write_repo_folder(folder, tmp_path / "repo", REPO_ID)

    package_encoder = Path(umarvel_st.__file__).parent / "modeling" / "encoder.py"
    assert (repo / "encoder.py").read_bytes() == package_encoder.read_bytes()


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--eval-report", '{"average": 0.5}', r"needs 'tasks' and 'average'"),
        ("--eval-report", '{"tasks": {"cirr_task7": {"k": 10}}, "average": 0.5}', r"'cirr_task7' needs .*'score'"),
        ("--eval-report", '{"tasks": {', r"bad\.json:1: the evaluation report is not valid JSON"),
        ("--eval-report", None, r"bad\.json' does not exist"),
        ("--run-config", "- lr: 1\n", r"must hold a mapping"),
    ],
)
def test_bad_card_inputs_are_refused_before_anything_is_written(
    saved: Path, tmp_path: Path, option: str, content: str | None, message: str
) -> None:
    bad = tmp_path / ("bad.yaml" if option == "--run-config" else "bad.json")
    if content is not None:
        bad.write_text(content)
    repo = tmp_path / "repo"
    with pytest.raises(ValueError, match=message):
        main(["publish", str(saved), REPO_ID, "--dry-run", str(repo), option, str(bad)])
    assert not repo.exists()


def test_a_missing_model_folder_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model folder '.*missing' does not exist"):
        main(["publish", str(tmp_path / "missing"), REPO_ID, "--dry-run", str(tmp_path / "repo")])
    assert not (tmp_path / "repo").exists()
