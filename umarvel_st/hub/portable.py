"""The portable variant: built-in sentence-transformers modules only, loadable without ``trust_remote_code``.

Why it exists: some runtimes cannot run a repository's code. The variant is ``Transformer -> Pooling("mean") ->
Normalize`` over the same backbone weights and tokenizer. Bidirectional attention survives through the backbone
config: transformers' ``create_causal_mask`` builds a bidirectional mask when the text config says
``is_causal: false`` (checked by ``tests/test_portable.py``, also for a batch of one). What cannot survive is the
U-MARVEL input layout and pooling (instruction span excluded from the mean, 1-D positions, the "Summarize above"
suffix and ``<emb>`` turn, the factor-28 pre-resize): the stock Transformer renders its own chat (the instruction
as a system turn, averaged) with native M-RoPE positions. So the export measures how far its embeddings are from
the exact model's on a sample and reports it.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from ..modeling import MBEIR_INSTRUCTIONS

logger = logging.getLogger(__name__)

ASSET_IMAGES = Path(__file__).parents[1] / "assets" / "images"
SAMPLE_TEXTS = (
    "a red square on a white background",
    "two dogs playing in the snow",
    "a bowl of fruit on a wooden table",
    "stripes of blue and yellow",
)


def drift_sample() -> tuple[list[Any], list[Any]]:
    """Built-in sample for the drift measurement: (queries, documents), text / image / image+text each."""
    images = [Image.open(path).convert("RGB") for path in sorted(ASSET_IMAGES.glob("*.png"))]
    pairs = [{"text": text, "image": image} for text, image in zip(SAMPLE_TEXTS, images, strict=False)]
    return [*SAMPLE_TEXTS, *images[:2], *pairs[:2]], [*SAMPLE_TEXTS, *images, *pairs]


def measure_drift(
    exact: SentenceTransformer, portable: SentenceTransformer, instruction: str = MBEIR_INSTRUCTIONS["mscoco_task0"]
) -> dict[str, float]:
    """Cosine similarity between the exact and the portable embedding of each sample item.

    Queries are encoded with ``instruction`` (the exact model puts it in its instruction span, the portable one in
    a system turn), documents without.

    Returns:
        ``{"mean": ..., "min": ..., "items": n}`` over all queries and documents of :func:`drift_sample`.
    """
    queries, documents = drift_sample()
    exact_vectors = np.concatenate(
        [exact.encode_query(queries, prompt=instruction), exact.encode_document(documents)]
    )  # (n, dim), unit rows
    portable_vectors = np.concatenate(
        [portable.encode_query(queries, prompt=instruction), portable.encode_document(documents)]
    )  # (n, dim), unit rows
    cosines = (exact_vectors * portable_vectors).sum(-1)  # (n,)
    return {"mean": float(cosines.mean()), "min": float(cosines.min()), "items": int(cosines.size)}


def export_portable(model: SentenceTransformer, output_dir: str | Path) -> SentenceTransformer:
    """Write the portable variant of a U-MARVEL model to ``output_dir`` and return it (loaded from there).

    The backbone config gets ``text_config.is_causal = false`` (bidirectional attention) and the image processor
    the model's pixel budget; the named instructions and dot-product similarity are kept.

    Args:
        model: A U-MARVEL model (``UMarvelTransformer -> InstructionMaskedMeanPooling -> Normalize``), LoRA merged.
        output_dir: Folder to write.

    Returns:
        The portable model, which ``SentenceTransformer(output_dir)`` loads the same way.
    """
    encoder = model[0]
    output_dir = Path(output_dir)
    encoder.model.save_pretrained(output_dir)
    processor = copy.deepcopy(encoder.processor)  # the exact model keeps its own processor settings
    processor.image_processor.size = {"shortest_edge": encoder.min_pixels, "longest_edge": encoder.max_pixels}
    processor.save_pretrained(output_dir)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["text_config"]["is_causal"] = False
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    transformer = Transformer(str(output_dir))
    portable = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()],
        prompts=dict(model.prompts),
        similarity_fn_name="dot",
        device=str(model.device),
    )
    portable.save(str(output_dir))
    logger.info("Wrote the portable variant to %s", output_dir)
    return portable
