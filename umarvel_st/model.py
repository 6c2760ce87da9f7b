"""Building U-MARVEL sentence-transformers models."""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize
from sentence_transformers.util import is_sentence_transformer_model

from .hub.card import UMarvelModelCardData
from .modeling import MBEIR_INSTRUCTIONS, InstructionMaskedMeanPooling, UMarvelTransformer
from .modeling.remote_code import PACKAGE_PREFIX, flatten_module_types

# Every ``modules.json`` type this package writes (flat, as saved) or wrote (the package path), mapped to the
# installed class, so that :func:`load` never imports code from the folder.
MODULE_CLASSES: dict[str, type] = {
    f"{prefix}{cls.__module__.rpartition('.')[2]}.{cls.__name__}": cls
    for cls in (UMarvelTransformer, InstructionMaskedMeanPooling)
    for prefix in ("", PACKAGE_PREFIX)
}


class UMarvelSentenceTransformer(SentenceTransformer):
    """A :class:`~sentence_transformers.SentenceTransformer` whose saved folders carry the modeling code.

    ``save`` (also used by ``save_pretrained``, trainer checkpoints and ``push_to_hub``) writes flat module types and
    the source files, so ``SentenceTransformer(folder_or_hub_id, trust_remote_code=True)`` loads the model with
    only sentence-transformers installed. The card sentence-transformers writes with it (on ``save`` and after
    training) shows that load and opens its example images as PIL images (:class:`UMarvelModelCardData`). Everything
    else is plain sentence-transformers.
    """

    model_card_data_class = UMarvelModelCardData

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        """Save as sentence-transformers does, with flat module types (see :mod:`umarvel_st.modeling.remote_code`)."""
        super().save(path, *args, **kwargs)
        flatten_module_types(path)


def check_model_source(model_name_or_path: str) -> None:
    """Refuse a model name that is neither a folder nor a Hub id (a mistyped local path) before anything loads.

    Raises:
        ValueError: If the name is a file, or neither an existing folder nor of the form ``org/name``.
    """
    if os.path.isdir(model_name_or_path):
        return
    if os.path.exists(model_name_or_path):
        raise ValueError(f"The model {model_name_or_path!r} is a file; pass the model's folder or its Hub id.")
    try:
        validate_repo_id(model_name_or_path)
    except HFValidationError:
        raise ValueError(
            f"The model folder {model_name_or_path!r} does not exist (and it is not a Hub id of the form org/name); "
            "check the path."
        ) from None


def from_mllm(
    model_name_or_path: str,
    *,
    device: str | None = None,
    pool_instruction: bool = False,
    prompts: dict[str, str] | None = None,
    **options: Any,
) -> SentenceTransformer:
    """Build a U-MARVEL embedder from a Qwen-VL checkpoint.

    From a base MLLM the three U-MARVEL tokens are added; a U-MARVEL checkpoint that already has them keeps their
    ids and rows. The result is ``UMarvelTransformer -> InstructionMaskedMeanPooling -> Normalize`` with the
    M-BEIR task instructions as named prompts and dot-product similarity.

    Args:
        model_name_or_path: Local folder or Hub id of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint.
        device: Torch device; defaults to CUDA when available.
        pool_instruction: Average the instruction tokens too (off in the reference).
        prompts: Named instructions; defaults to the 16 M-BEIR task instructions.
        **options: :class:`~umarvel_st.modeling.UMarvelTransformer` options (``summarize_suffix``,
            ``generation_prompt``, ``train_generation_prompt``, ``max_pixels``, ``position_mode``, ``image_backend``,
            ``max_seq_length`` (1024 by default), ``model_kwargs`` (``dtype`` or ``torch_dtype``)...).

    Returns:
        A :class:`~sentence_transformers.SentenceTransformer` (whose ``save`` also writes the modeling code). Use
        ``encode_query(items, prompt=instruction)`` or ``prompt_name=`` for queries and ``encode_document(items)``
        for candidates. An item is a query exactly when it carries an instruction: ``model.prompts["query"]`` is
        ``""``, so ``encode_query`` without a prompt embeds exactly as ``encode_document`` (logged once).
        The model trains with the sentence-transformers trainer as it is: in train mode the generation prompt is
        left out, as in the reference's training.

    Example:
        >>> model = from_mllm("TencentBAC/U-MARVEL-Qwen2VL-7B-Instruct")  # doctest: +SKIP
        >>> q = model.encode_query(["a dog on a beach"], prompt_name="mscoco_task0")  # doctest: +SKIP
    """
    check_model_source(model_name_or_path)
    if os.path.isdir(model_name_or_path) and not os.path.isfile(os.path.join(model_name_or_path, "config.json")):
        raise ValueError(
            f"{model_name_or_path!r} has no config.json, so it is not a Qwen-VL checkpoint folder; pass the folder "
            "that holds the checkpoint's config.json and weights."
        )
    if prompts is not None and (
        not isinstance(prompts, dict)
        or not all(isinstance(key, str) and isinstance(value, str) for key, value in prompts.items())
    ):
        raise TypeError(f"prompts must be a dict of name -> instruction strings, got {prompts!r:.200}.")
    encoder = UMarvelTransformer(model_name_or_path, **options)
    modules = [encoder, InstructionMaskedMeanPooling(pool_instruction=pool_instruction), Normalize()]
    return UMarvelSentenceTransformer(
        modules=modules,
        device=device,
        prompts=dict(MBEIR_INSTRUCTIONS if prompts is None else prompts),
        similarity_fn_name="dot",
    )


def load(model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> SentenceTransformer:
    """Load a saved U-MARVEL model (folder or Hub id) with this package's installed classes.

    ``SentenceTransformer(path, trust_remote_code=True)`` would import the modeling code stored in the folder.
    This loader resolves the U-MARVEL module types to the installed classes instead, so it needs no
    ``trust_remote_code`` and runs no code from the folder; every saved option (suffix, pixel budget, positions,
    prompts...) is restored. Other non-sentence-transformers types in ``modules.json`` are refused unless
    ``trust_remote_code=True`` is passed, exactly as in sentence-transformers.

    Args:
        model_name_or_path: A folder written by ``model.save`` / ``umarvel convert`` / ``umarvel train``, or the
            Hub id of such a repository.
        **kwargs: Passed to :class:`~sentence_transformers.SentenceTransformer` (``device``, ``model_kwargs``,
            ``revision``, ``cache_folder``, ``local_files_only``...).

    Returns:
        The model; its ``save`` writes the modeling code again.

    Example:
        >>> model = load("my-umarvel")  # doctest: +SKIP
    """
    name = os.fspath(model_name_or_path)
    check_model_source(name)
    if os.path.isdir(name) and not is_sentence_transformer_model(name):
        # sentence-transformers would silently build a plain mean-pooling model from it, not U-MARVEL.
        raise ValueError(
            f"{name!r} holds no saved sentence-transformers model (no modules.json). For a Qwen-VL or official "
            "U-MARVEL checkpoint use umarvel_st.from_mllm(path) or `umarvel convert`."
        )
    # ST resolves types listed in `module_classes` to the given classes instead of importing them.
    return UMarvelSentenceTransformer._load_with_module_classes(name, MODULE_CLASSES, **kwargs)


def open_model(model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> SentenceTransformer:
    """A saved sentence-transformers model as it was saved, anything else as a new U-MARVEL embedder.

    A folder or Hub repository with ``modules.json`` goes through :func:`load` (every saved option restored, no code
    run from the folder); a Qwen-VL checkpoint goes through :func:`from_mllm`. This is how every ``umarvel``
    command opens the model it is given.

    Args:
        model_name_or_path: A saved model or a Qwen-VL checkpoint (folder or Hub id).
        **kwargs: Passed to :func:`load` or :func:`from_mllm` (``device``...).

    Returns:
        The model.
    """
    if is_sentence_transformer_model(os.fspath(model_name_or_path)):
        return load(model_name_or_path, **kwargs)
    return from_mllm(os.fspath(model_name_or_path), **kwargs)
