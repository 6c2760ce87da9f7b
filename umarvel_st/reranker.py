"""Building the U-MARVEL re-ranker: a sentence-transformers ``CrossEncoder`` that returns P(Yes) per pair."""

from __future__ import annotations

import os
from typing import Any

import torch
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.modules import LogitScore

from .modeling.remote_code import PACKAGE_PREFIX, flatten_module_types
from .modeling.reranker import UMarvelRerankerTransformer, normalize_pair

#: ``modules.json`` types of a saved re-ranker (flat and package path) mapped to the installed class.
RERANKER_MODULE_CLASSES: dict[str, type] = {
    f"{prefix}reranker.{UMarvelRerankerTransformer.__name__}": UMarvelRerankerTransformer
    for prefix in ("", PACKAGE_PREFIX)
}


class UMarvelCrossEncoder(CrossEncoder):
    """A :class:`~sentence_transformers.CrossEncoder` for the U-MARVEL re-ranker.

    ``predict`` checks every pair before any work starts (errors name the pair index), and ``save`` (also used by
    ``save_pretrained``, trainer checkpoints and ``push_to_hub``) writes flat module types and the modeling source, so
    ``CrossEncoder(folder_or_hub_id, trust_remote_code=True)`` loads it with only sentence-transformers installed.
    """

    def predict(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`CrossEncoder.predict <sentence_transformers.CrossEncoder.predict>` with the pairs checked first.

        Extra keyword: ``share_prefix`` (bool) overrides the module's option for this call.

        Raises:
            ValueError: For an empty pair list, an unusable item (missing image file...) or a text holding a control
                token, naming the pair index.
            TypeError: For a pair that is not a 2-tuple or an unsupported item type, naming the pair index.
        """
        pairs = [inputs] if self.is_singular_input(inputs) else list(inputs)
        if not pairs:
            raise ValueError("predict() got no pairs; pass a non-empty list of (query, candidate) pairs.")
        self[0].check_plain_text(
            [normalize_pair(pair, index) for index, pair in enumerate(pairs)], kwargs.get("prompt")
        )
        return super().predict(inputs, *args, **kwargs)

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().save(path, *args, **kwargs)
        flatten_module_types(path)


def reranker_from_mllm(model_name_or_path: str, *, device: str | None = None, **options: Any) -> UMarvelCrossEncoder:
    """Build the U-MARVEL re-ranker from a Qwen-VL checkpoint with its LM head.

    The result is ``UMarvelRerankerTransformer -> LogitScore(Yes, No)`` with a sigmoid activation, so ``predict``
    returns P(Yes) = softmax([logit Yes, logit No])[0], the official score.

    Args:
        model_name_or_path: A base Qwen2-VL / Qwen2.5-VL / Qwen3-VL ``...ForConditionalGeneration`` checkpoint, or the
            folder of a trained re-ranker (its root holds the merged weights; options come from ``options``).
        device: Torch device; defaults to CUDA when available.
        **options: :class:`~umarvel_st.modeling.reranker.UMarvelRerankerTransformer` options (``position_mode``,
            ``max_pixels``, ``share_prefix``, ``model_kwargs``...).

    Returns:
        A :class:`UMarvelCrossEncoder`. Score with ``predict([(query, candidate), ...])`` or
        ``rank(query, candidates, top_k=...)``. A query is text, an image or ``{"text", "image", "instruction"}``;
        a candidate is text, an image or ``{"text", "image"}``.

    Example:
        >>> model = reranker_from_mllm("Qwen/Qwen2-VL-7B-Instruct")  # doctest: +SKIP
        >>> model.rank({"text": "a dog", "instruction": "Find an image."}, [img1, img2])  # doctest: +SKIP
    """
    module = UMarvelRerankerTransformer(model_name_or_path, **options)
    score = LogitScore(true_token_id=module.yes_token_id, false_token_id=module.no_token_id)
    return UMarvelCrossEncoder(modules=[module, score], device=device, activation_fn=torch.nn.Sigmoid())


def load_reranker(model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> UMarvelCrossEncoder:
    """Load a saved U-MARVEL re-ranker (folder or Hub id) with this package's installed classes.

    Unlike ``CrossEncoder(path, trust_remote_code=True)`` this runs no code from the folder.

    Args:
        model_name_or_path: A folder written by ``model.save`` or the Hub id of such a repository.
        **kwargs: Passed to :class:`~sentence_transformers.CrossEncoder` (``device``, ``model_kwargs``...).

    Returns:
        The re-ranker; its ``save`` writes the modeling code again.
    """
    return UMarvelCrossEncoder._load_with_module_classes(
        os.fspath(model_name_or_path), RERANKER_MODULE_CLASSES, **kwargs
    )


def convert_official_reranker(
    base_model: str, adapter: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
) -> UMarvelCrossEncoder:
    """Turn an official U-MARVEL re-ranker checkpoint (a LoRA adapter on a Qwen-VL ``...ForConditionalGeneration``,
    no tokens added) into a saved re-ranker folder.

    The adapter is merged into the base weights; the folder gets the merged backbone at its root with the base
    model's tokenizer and processor, the scoring options (``sentence_bert_config.json``), ``modules.json`` =
    [``reranker.UMarvelRerankerTransformer``, ``LogitScore(yes_id, no_id)``], a sigmoid activation and the modeling
    code. No embedding row changes.

    Args:
        base_model: The adapter's base model (folder or Hub id), e.g. ``Qwen/Qwen2-VL-7B-Instruct``.
        adapter: The official adapter folder (``adapter_config.json`` + weights).
        output: Folder to save the re-ranker to.
        **options: :func:`reranker_from_mllm` options (``model_kwargs={"dtype": ...}``...).

    Returns:
        The converted re-ranker (also saved to ``output``).
    """
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = (options.get("model_kwargs") or {}).get("dtype", "auto")
    with tempfile.TemporaryDirectory() as merged:
        base = AutoModelForImageTextToText.from_pretrained(base_model, dtype=dtype)
        PeftModel.from_pretrained(base, os.fspath(adapter)).merge_and_unload().save_pretrained(merged)
        AutoProcessor.from_pretrained(base_model).save_pretrained(merged)
        model = reranker_from_mllm(merged, **options)
        model.save(os.fspath(output))
    return load_reranker(output)
