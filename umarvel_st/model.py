"""Building U-MARVEL sentence-transformers models."""

from __future__ import annotations

from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize

from .modeling import MBEIR_INSTRUCTIONS, InstructionMaskedMeanPooling, UMarvelTransformer
from .modeling.remote_code import flatten_module_types


class UMarvelSentenceTransformer(SentenceTransformer):
    """A :class:`~sentence_transformers.SentenceTransformer` whose saved folders carry the modeling code.

    ``save`` (also used by ``save_pretrained``, trainer checkpoints and ``push_to_hub``) writes flat module types and
    the source files, so ``SentenceTransformer(folder_or_hub_id, trust_remote_code=True)`` loads the model with
    only sentence-transformers installed. Everything else is plain sentence-transformers.
    """

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().save(path, *args, **kwargs)
        flatten_module_types(path)


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
            ``generation_prompt``, ``max_pixels``, ``position_mode``, ``image_backend``, ``model_kwargs``,
            ``max_seq_length``...).

    Returns:
        A :class:`~sentence_transformers.SentenceTransformer` (whose ``save`` also writes the modeling code). Use ``encode_query(items, prompt=instruction)``
        for queries and ``encode_document(items)`` for candidates.

    Example:
        >>> model = from_mllm("TencentBAC/U-MARVEL-Qwen2VL-7B-Instruct")  # doctest: +SKIP
        >>> q = model.encode_query(["a dog on a beach"], prompt_name="mscoco_task0")  # doctest: +SKIP
    """
    encoder = UMarvelTransformer(model_name_or_path, **options)
    modules = [encoder, InstructionMaskedMeanPooling(pool_instruction=pool_instruction), Normalize()]
    return UMarvelSentenceTransformer(
        modules=modules,
        device=device,
        prompts=dict(MBEIR_INSTRUCTIONS if prompts is None else prompts),
        similarity_fn_name="dot",
    )
