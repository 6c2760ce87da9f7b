"""Converting an official U-MARVEL checkpoint into an umarvel-st model (``umarvel convert SRC DST``).

Why a converter: the official checkpoints (``TencentBAC/U-MARVEL-Qwen2VL-7B-Instruct``,
``TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct``) keep the backbone's full, padded embedding matrix (152064 rows for
Qwen2-VL-7B, whose tokenizer has 151657 entries) but do not store ``<emb>``, ``<instruction_start>`` and
``<instruction_end>`` in their tokenizer. The official evaluation adds them at load time: the tokenizer gives them
the first ids past its vocabulary (151657-151659 on the 7B), the embedding matrix is shrunk to
``len(tokenizer) + 1`` rows (so ``<emb>`` keeps its stored row) and then grown twice, and transformers >= 4.46
initialises each grown row with the mean of the rows before it. The converter reproduces that deterministically
(exact means instead of transformers' sample from a normal with 1e-9 x the rows' covariance) and then saves a
model that embeds with the reference options and loads without this package.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoTokenizer

from ..model import from_mllm
from ..modeling import get_backbone
from ..modeling.inputs import EMB_TOKEN, INSTRUCTION_END, INSTRUCTION_START, MAX_PIXELS, MIN_PIXELS, UMARVEL_TOKENS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did.

    Attributes:
        token_ids: Id of each U-MARVEL token in the converted tokenizer.
        initialised_rows: Tokens whose embedding row was set to the mean (empty when the checkpoint stored them).
        mean_of_rows: The half-open row range ``(0, n)`` the mean was taken over (``None`` if no row was set).
        dimension: Embedding dimension (the language model's hidden size).
        weight_bytes: Bytes of all weights in the dtype they were loaded in.
        dtype: That dtype.
    """

    token_ids: dict[str, int]
    initialised_rows: tuple[str, ...]
    mean_of_rows: tuple[int, int] | None
    dimension: int
    weight_bytes: int
    dtype: str


def reference_options(model_type: str) -> dict[str, Any]:
    """The options the official evaluation embeds with, for a backbone ``model_type`` (spec section 1).

    Raises:
        ValueError: If the backbone is not supported.
    """
    return {
        "summarize_suffix": True,
        "generation_prompt": True,
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "position_mode": "sequential",
        "image_backend": get_backbone(model_type).image_backend,
    }


def initialise_instruction_rows(
    model: SentenceTransformer, vocab_size: int, stored_rows: int
) -> tuple[tuple[str, ...], int]:
    """Set the rows of the U-MARVEL tokens the official evaluation initialises, as it does, but deterministically.

    The official evaluation shrinks the matrix to ``vocab_size + 1`` rows (``<emb>``, at id ``vocab_size``, keeps
    its stored row) and grows it by one row for ``<instruction_start>`` and then one for ``<instruction_end>``,
    each new row being the mean of the rows before it. The mean of rows ``0 .. vocab_size`` (inclusive: the
    original tokenizer's rows and ``<emb>``'s stored row) is therefore the value of both new rows: appending the
    mean to a set of rows leaves their mean unchanged. Padding rows past the tokenizer never enter the mean. A
    matrix with no stored row for ``<emb>`` (fewer than ``vocab_size + 1`` rows) gets the mean there too.

    Args:
        model: A U-MARVEL model whose tokenizer has just been given the three tokens at ids ``vocab_size``,
            ``vocab_size + 1`` and ``vocab_size + 2``.
        vocab_size: ``len(tokenizer)`` of the checkpoint before the tokens were added.
        stored_rows: Rows of the checkpoint's embedding matrix (its text config's ``vocab_size``).

    Returns:
        The tokens whose row was set, and the number of rows ``n`` the mean was taken over (rows ``0 .. n-1``).
    """
    encoder = model[0]
    ids = encoder.tokenizer.convert_tokens_to_ids(list(UMARVEL_TOKENS))
    assert ids == [vocab_size, vocab_size + 1, vocab_size + 2], ids
    weight = encoder.model.get_input_embeddings().weight  # (rows, hidden)
    initialised = (INSTRUCTION_START, INSTRUCTION_END)
    if stored_rows <= vocab_size:
        logger.warning("The checkpoint has no stored row for %s (id %d); it gets the mean too.", EMB_TOKEN, vocab_size)
        initialised = UMARVEL_TOKENS
    rows = min(stored_rows, vocab_size + 1)
    with torch.no_grad():
        mean = weight[:rows].to(torch.float32).mean(0)  # (hidden,)
        for token in initialised:
            weight[encoder.tokenizer.convert_tokens_to_ids(token)] = mean.to(weight.dtype)
    return initialised, rows


def _check_paths(source: str, destination: Path, overwrite: bool) -> None:
    """Refuse a source that is neither a folder nor a Hub id, and a destination that holds files (see ``overwrite``)."""
    if not Path(source).is_dir():
        if Path(source).exists():
            raise ValueError(f"The source {source!r} is a file; pass the checkpoint's folder or its Hub id.")
        try:
            validate_repo_id(source)
        except HFValidationError:
            raise ValueError(
                f"The checkpoint folder {source!r} does not exist (and it is not a Hub id of the form org/name); "
                "check the path."
            ) from None
    if not destination.exists():
        return
    if not destination.is_dir():
        raise ValueError(f"The destination {str(destination)!r} is a file; pass a new or empty folder.")
    if Path(source).is_dir() and destination.resolve() == Path(source).resolve():
        raise ValueError(f"The destination {str(destination)!r} is the source folder; pass another folder.")
    if any(destination.iterdir()):
        if not overwrite:
            raise ValueError(
                f"The destination {str(destination)!r} is not empty; converting into it would mix its files with the "
                "new model's. Pass a new or empty folder, or --overwrite (overwrite=True) to replace a model saved "
                "there before."
            )
        if not (destination / "modules.json").is_file():
            raise ValueError(
                f"--overwrite only replaces a folder holding a saved model (modules.json), and {str(destination)!r} "
                "holds other files; pass a new or empty folder."
            )


def convert_checkpoint(
    source: str, destination: str | Path, *, dtype: str = "auto", overwrite: bool = False, **options: Any
) -> tuple[SentenceTransformer, ConversionReport]:
    """Convert an official U-MARVEL checkpoint (local folder or Hub id) and save it to ``destination``.

    A checkpoint without the U-MARVEL tokens gets them as the official evaluation adds them (see
    :func:`initialise_instruction_rows`); one that stores them keeps its ids and rows. The model is saved with
    the reference options of its backbone (:func:`reference_options`) and its modeling code, so it loads with
    ``SentenceTransformer(destination, trust_remote_code=True)``.

    Args:
        source: Folder or Hub id of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL U-MARVEL checkpoint.
        destination: Folder to write.
        dtype: Weight dtype to load and save in; ``"auto"`` keeps the checkpoint's (bfloat16 for the official ones).
        overwrite: Replace the model already saved in ``destination`` (its whole folder, once the conversion
            succeeded). Without it, ``destination`` must be new or empty.
        **options: Overrides of the reference options (e.g. ``max_pixels``).

    Returns:
        The converted model and a :class:`ConversionReport`.

    Raises:
        ValueError: Before any work, if ``source`` is neither a folder nor a Hub id, or ``destination`` is not
            empty (and not a saved model to overwrite); later, if the backbone is unsupported or the tokenizer
            holds only some of the tokens.
    """
    destination = Path(destination)
    _check_paths(source, destination, overwrite)
    config = AutoConfig.from_pretrained(source)
    vocab = AutoTokenizer.from_pretrained(source).get_vocab()
    present = [token for token in UMARVEL_TOKENS if token in vocab]
    if present and len(present) != len(UMARVEL_TOKENS):
        raise ValueError(
            f"{source!r} has only {present} of the U-MARVEL tokens {list(UMARVEL_TOKENS)}; "
            "pass a checkpoint with all of them or none."
        )
    settings = {**reference_options(config.model_type), **options, "model_kwargs": {"dtype": dtype}}
    model = from_mllm(source, **settings)
    initialised: tuple[str, ...] = ()
    mean_of_rows = None
    if not present:
        initialised, rows = initialise_instruction_rows(model, len(vocab), config.get_text_config().vocab_size)
        mean_of_rows = (0, rows)
        logger.info(
            "Set the rows of %s to the mean of embedding rows 0..%d (as the official evaluation)",
            initialised,
            rows - 1,
        )
    encoder = model[0]
    parameters = list(encoder.model.parameters())
    report = ConversionReport(
        token_ids=dict(
            zip(UMARVEL_TOKENS, encoder.tokenizer.convert_tokens_to_ids(list(UMARVEL_TOKENS)), strict=True)
        ),
        initialised_rows=initialised,
        mean_of_rows=mean_of_rows,
        dimension=model.get_embedding_dimension(),
        weight_bytes=sum(parameter.numel() * parameter.element_size() for parameter in parameters),
        dtype=str(parameters[0].dtype).removeprefix("torch."),
    )
    if overwrite and destination.exists():
        shutil.rmtree(destination)
    model.save(str(destination))
    logger.info("Saved the converted model to %s", destination)
    return model, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``umarvel convert`` arguments."""
    parser.add_argument(
        "source", help="official checkpoint: local folder or Hub id (e.g. TencentBAC/U-MARVEL-Qwen2VL-7B-Instruct)"
    )
    parser.add_argument("destination", help="folder to write the umarvel-st model to")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="weight dtype (default: the checkpoint's own, bfloat16 for the official ones)",
    )
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="image pixel budget (default 300*28*28)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a model already saved in the destination folder"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel convert``."""
    _, report = convert_checkpoint(
        args.source, args.destination, dtype=args.dtype, overwrite=args.overwrite, max_pixels=args.max_pixels
    )
    print(f"Converted {args.source} -> {args.destination}")
    print("Token ids: " + ", ".join(f"{token} {index}" for token, index in report.token_ids.items()))
    if report.initialised_rows:
        start, stop = report.mean_of_rows
        print(
            f"Rows of {', '.join(report.initialised_rows)} set to the mean of embedding rows {start}..{stop - 1} "
            "(the official evaluation's initialisation, made deterministic); other rows kept as stored."
        )
    else:
        print("The checkpoint stores the U-MARVEL tokens; their ids and rows are kept.")
    print(f"Embedding dimension {report.dimension}; weights {report.weight_bytes / 1e9:.2f} GB in {report.dtype}.")
    return 0
