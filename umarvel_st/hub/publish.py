"""Publishing a U-MARVEL model as a Hugging Face Hub repository (``umarvel publish`` and :func:`publish`).

The repository folder is written in full before anything is pushed, so ``--dry-run DIR`` shows exactly what would
be uploaded: safetensors weights, tokenizer and processor, the sentence-transformers configs, the flat modeling
files (the model loads with ``trust_remote_code=True`` and no umarvel-st), ``handler.py`` for Inference Endpoints,
example images under ``assets/`` and the model card. A LoRA-trained model is merged first, unless an adapter repo
naming its base model is asked for. ``--portable`` writes the built-in-modules variant instead (see
:mod:`umarvel_st.hub.portable`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

from peft import PeftModel
from sentence_transformers import CrossEncoder, SentenceTransformer

from ..model import load
from ..modeling.remote_code import flatten_module_types
from ..train.lora import merge_lora
from .card import CardData, render_model_card
from .portable import ASSET_IMAGES, export_portable, measure_drift
from .reranker_card import is_reranker_folder, write_reranker_repo_folder

logger = logging.getLogger(__name__)

HANDLER_SOURCE = Path(__file__).with_name("handler.py")
CARD_IMAGE = "img_shapes_112x56.png"
DRIFT_FILE = "drift.json"
TEXT_SUFFIXES = {".json", ".jinja", ".md", ".py", ".txt", ".yaml", ".yml"}


def _check_repo_id(repo_id: str) -> None:
    org, _, name = repo_id.partition("/")
    if not org or not name or "/" in name:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}.")


def _check_no_local_paths(folder: Path, local_paths: set[str]) -> None:
    """Raise if a text file of the repo folder names a local path (it would leak and break loading elsewhere)."""
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix in TEXT_SUFFIXES:
            text = file.read_text(encoding="utf-8", errors="replace")
            leaked = sorted(path for path in local_paths if path in text)
            if leaked:
                raise ValueError(
                    f"{file.relative_to(folder)} names the local path(s) {leaked}; a Hub repo must not. "
                    "Re-save the model from a clean folder, or remove the path from that file."
                )


def _load(model: SentenceTransformer | str | Path) -> SentenceTransformer:
    """The model itself, or the model saved in a local folder, loaded with the installed classes (no folder code)."""
    if isinstance(model, SentenceTransformer):
        return model
    if not Path(model).is_dir():
        raise ValueError(
            f"The model folder {str(model)!r} does not exist (or is not a folder); pass the folder a U-MARVEL model "
            "was saved to (model.save / umarvel convert / umarvel train)."
        )
    if not (Path(model) / "modules.json").is_file():
        raise ValueError(
            f"{str(model)!r} is not a saved sentence-transformers model folder (no modules.json). Save the model "
            "first (model.save(folder)), or convert an official checkpoint with `umarvel convert`."
        )
    return load(model)


def write_repo_folder(
    model: SentenceTransformer | str | Path,
    folder: str | Path,
    repo_id: str,
    *,
    card: CardData | None = None,
    adapter_base_model: str | None = None,
    portable: bool = False,
) -> Path:
    """Write the exact Hub repository folder of ``model`` (nothing is pushed).

    Args:
        model: A U-MARVEL model or the folder it was saved to.
        folder: Empty or missing folder to write.
        repo_id: The Hub id the card's snippets load (``"org/name"``).
        card: What the card says beyond the model (base model, datasets, license, run configs, reports).
        adapter_base_model: For a model with a LoRA adapter: write an adapter repo (adapter weights only) whose
            ``adapter_config.json`` names this Hub id as its base. Without it, the adapter is merged in place.
        portable: Write the portable variant (built-in modules only) and measure its drift.

    Returns:
        The folder.

    Raises:
        ValueError: If ``repo_id`` is malformed, ``folder`` is not empty, the model folder is missing, the model is
            not a U-MARVEL model, or a file would name a local path. All but the last are checked before anything
            is written.
    """
    _check_repo_id(repo_id)
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{str(folder)!r} is not an empty folder; pass a new or empty folder to write the repo into.")
    source = model if isinstance(model, (str, Path)) else None
    if isinstance(model, CrossEncoder) or (source is not None and is_reranker_folder(source)):  # issue 9: re-ranker
        if portable or adapter_base_model:
            raise ValueError("A re-ranker is published merged and exact: drop portable / adapter_base_model.")
        folder = write_reranker_repo_folder(model, folder, repo_id, card)
        local_paths = {str(Path.cwd()), str(Path.home()), str(folder.resolve()), str(Path(__file__).parents[2])}
        _check_no_local_paths(folder, local_paths | ({str(Path(source).resolve())} if source else set()))
        return folder
    model = _load(model)
    if type(model[0]).__name__ != "UMarvelTransformer":
        raise ValueError(
            f"Expected a U-MARVEL model (first module UMarvelTransformer), got {type(model[0]).__name__}; "
            "build one with umarvel_st.from_mllm or `umarvel convert`."
        )
    card = card or CardData()
    has_adapter = isinstance(model[0].model, PeftModel)
    if adapter_base_model and not has_adapter:
        raise ValueError("adapter_base_model was given, but the model has no LoRA adapter; publish it merged.")
    if has_adapter and (portable or not adapter_base_model):
        logger.info("Merging the LoRA adapter into the weights (in place) before publishing")
        merge_lora(model)
    folder.mkdir(parents=True, exist_ok=True)
    image = CARD_IMAGE
    if portable:
        exact = model
        model = export_portable(exact, folder)
        drift = measure_drift(exact, model)
        logger.info("Portable drift against the exact model: mean cosine %.4f, min %.4f", drift["mean"], drift["min"])
        (folder / DRIFT_FILE).write_text(json.dumps(drift, indent=2) + "\n", encoding="utf-8")
        card = dataclasses.replace(card, drift=drift)
    else:
        model.save(str(folder))
        flatten_module_types(folder)  # also for a model built as a plain SentenceTransformer of installed classes
        shutil.copyfile(HANDLER_SOURCE, folder / "handler.py")
    if has_adapter and adapter_base_model:
        adapter_config_path = next(folder.rglob("adapter_config.json"))
        adapter_config = json.loads(adapter_config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = adapter_base_model
        adapter_config_path.write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
        card = dataclasses.replace(card, base_model=adapter_base_model)
    shutil.copytree(ASSET_IMAGES, folder / "assets")
    (folder / "README.md").write_text(
        render_model_card(model, repo_id, card, image=image, portable=portable), encoding="utf-8"
    )
    local_paths = {str(Path.cwd()), str(Path.home()), str(folder.resolve()), str(Path(__file__).parents[2])}
    if source is not None:
        local_paths.add(str(Path(source).resolve()))
    _check_no_local_paths(folder, {path for path in local_paths if path != "/"})
    return folder


def publish(
    model: SentenceTransformer | str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: str | Path | None = None,
    card: CardData | None = None,
    adapter_base_model: str | None = None,
    portable: bool = False,
    token: str | None = None,
) -> Path | str:
    """Write the Hub repository of ``model`` and push it with huggingface-hub (or only write it: ``dry_run``).

    Args:
        model: A U-MARVEL model or the folder it was saved to.
        repo_id: Target Hub repository, ``"org/name"``; created if missing.
        private: Create the repository as private.
        dry_run: Write the repository folder here and push nothing.
        card: What the card says beyond the model (see :class:`~umarvel_st.hub.card.CardData`).
        adapter_base_model: Publish only the LoRA adapter, naming this base model (see :func:`write_repo_folder`).
        portable: Publish the portable variant (built-in sentence-transformers modules only).
        token: Hub token; defaults to the logged-in one.

    Returns:
        The dry-run folder, or the URL of the pushed commit.

    Example:
        >>> publish("my-umarvel", "me/u-marvel", dry_run="repo-preview")  # doctest: +SKIP
    """
    options = {"card": card, "adapter_base_model": adapter_base_model, "portable": portable}
    if dry_run is not None:
        return write_repo_folder(model, dry_run, repo_id, **options)
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_repo_folder(model, Path(scratch) / "repo", repo_id, **options)
        return push_folder(folder, repo_id, private=private, token=token)


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` if missing and upload ``folder`` to it with huggingface-hub.

    Returns:
        The URL of the pushed commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message="Upload U-MARVEL model"
    )
    logger.info("Pushed %s", repo_id)
    return str(commit.commit_url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``umarvel publish`` arguments."""
    parser.add_argument("model_dir", help="folder of a saved U-MARVEL model (model.save / umarvel convert / train)")
    parser.add_argument("repo_id", help="Hub repository, org/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", metavar="DIR", help="only write the repository folder to DIR; push nothing")
    parser.add_argument("--portable", action="store_true", help="publish the built-in-modules variant (see its card)")
    parser.add_argument("--exact-repo-id", help="with --portable: the repo of the exact model, named in the card")
    parser.add_argument("--adapter-base-model", help="publish only the LoRA adapter, naming this base model Hub id")
    parser.add_argument("--base-model", help="Hub id of the model this one was built from (card metadata)")
    parser.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--license", default="apache-2.0", help="license id (check the base model's license)")
    parser.add_argument("--run-config", action="append", default=[], help="training run config YAML/JSON (repeatable)")
    parser.add_argument("--eval-report", action="append", default=[], help="`umarvel eval` results.json (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel publish``."""
    if args.exact_repo_id and not args.portable:
        raise ValueError(
            f"--exact-repo-id {args.exact_repo_id} names the exact model in a --portable card; add --portable or "
            "drop --exact-repo-id."
        )
    card = CardData(  # reads and checks the run configs and reports before anything is loaded or written
        base_model=args.base_model,
        datasets=args.dataset,
        license=args.license,
        run_configs=args.run_config,
        eval_reports=args.eval_report,
        exact_repo_id=args.exact_repo_id,
    )
    options = {"card": card, "adapter_base_model": args.adapter_base_model, "portable": args.portable}
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_repo_folder(args.model_dir, args.dry_run or Path(scratch) / "repo", args.repo_id, **options)
        if args.portable:
            drift = json.loads((folder / DRIFT_FILE).read_text(encoding="utf-8"))
            print(
                f"Portable variant: cosine to the exact model on {drift['items']} sample items: "
                f"mean {drift['mean']:.4f}, min {drift['min']:.4f} (also in its card and {DRIFT_FILE})"
            )
        if args.dry_run:
            print(f"Wrote the repository folder for {args.repo_id} to {folder} (nothing pushed)")
        else:
            print(f"Pushed {args.repo_id}: {push_folder(folder, args.repo_id, private=args.private)}")
    return 0
