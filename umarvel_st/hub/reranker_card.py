"""The Hub repository of a U-MARVEL re-ranker (``umarvel publish`` on a re-ranker folder).

The folder holds the merged weights, tokenizer and processor, the sentence-transformers configs, the flat modeling
files (it loads with ``CrossEncoder(repo_id, trust_remote_code=True)`` and no umarvel-st), example images under
``assets/`` and a card that says what the model scores, with which prompt, and how to use it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml
from peft import PeftModel
from sentence_transformers import CrossEncoder

from ..modeling.reranker import UMarvelRerankerTransformer
from ..reranker import load_reranker
from ..train.lora import merge_lora
from .card import BACKBONE_NAMES, CardData
from .portable import ASSET_IMAGES

logger = logging.getLogger(__name__)

CARD_IMAGE = "img_shapes_112x56.png"
TAGS = ["sentence-transformers", "cross-encoder", "text-ranking", "multimodal", "reranker", "u-marvel"]


def is_reranker_folder(folder: str | Path) -> bool:
    """Whether a saved model folder holds a U-MARVEL re-ranker (its first module type)."""
    modules = Path(folder) / "modules.json"
    if not modules.is_file():
        return False
    first = json.loads(modules.read_text(encoding="utf-8"))[0]["type"]
    return first.endswith(UMarvelRerankerTransformer.__name__)


def render_reranker_card(model: CrossEncoder, repo_id: str, card: CardData, image: str = CARD_IMAGE) -> str:
    """The ``README.md`` of a re-ranker repository (its Python blocks run as written with only
    sentence-transformers installed)."""
    module = model[0]
    metadata: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "text-ranking",
        "license": card.license,
        "tags": TAGS,
    }
    if card.base_model:
        metadata["base_model"] = card.base_model
    if card.datasets:
        metadata["datasets"] = list(card.datasets)
    backbone = BACKBONE_NAMES.get(module.config.model_type, module.config.model_type)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    name = repo_id.split("/")[-1]
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False)}---

# {name}

A [U-MARVEL](https://arxiv.org/abs/2507.14902) pointwise multimodal **re-ranker** as a
[sentence-transformers](https://www.sbert.net) `CrossEncoder`. It scores a (query, candidate) pair, where either side
may be text, an image, or both, by asking a causal {backbone} whether the candidate meets the query and reading the
first generated token: the score is **P(Yes) = softmax([logit("Yes"), logit("No")])[0]**, in (0, 1). It scores
exactly as the official U-MARVEL code (its modeling code ships with this repository, hence `trust_remote_code=True`).
Use it to re-rank the top candidates of a U-MARVEL embedder (U-MARVEL+: final score = cosine + 0.1 x P(Yes)).

- **Backbone:** {backbone}{f" (base model: [`{card.base_model}`](https://huggingface.co/{card.base_model}))" if card.base_model else ""}
- **Weights:** {parameters:,} parameters
- **Images:** pre-resized to multiples of 28 within `max_pixels` = {module.max_pixels} pixels

## Usage

```bash
pip install -U sentence-transformers
```

```python
from huggingface_hub import hf_hub_download
from PIL import Image
from sentence_transformers import CrossEncoder

model = CrossEncoder("{repo_id}", trust_remote_code=True)
image = Image.open(hf_hub_download("{repo_id}", "assets/{image}"))

# A query may carry its task instruction; candidates never do.
query = {{"text": "a red block", "instruction": "Find an image that matches the given caption."}}
candidates = ["a red square", image, {{"text": "a red block", "image": image}}, "a blue circle"]
for hit in model.rank(query, candidates, top_k=3):
    print(hit["corpus_id"], round(hit["score"], 4))  # score = P(Yes)

scores = model.predict([(query, "a red square"), ({{"image": image, "instruction": "Find a caption."}}, "shapes")])
print(scores)
```

Items are `str`, a PIL image, or a dict with `text`, `image` (PIL image or path) and, for the query, `instruction`.
When one query meets many candidates, the query prefix is computed once per batch (`share_prefix`, on by default;
the scores equal the unshared path's to 1e-5).

## What the model sees

One user turn after the default system turn, content items back to back with no separator:

```text
<pointwise instruction>Query:<query image><format(instruction + " " + query text)>Candidate:<candidate image><candidate text>
```

The pointwise instruction is the official string, kept byte for byte because the weights were trained on it (24
spaces before "meets" and the typo "responed"):

```text
{module.rerank_prompt}
```

Scoring renders with the generation prompt, pads on the left, never truncates, uses {backbone}'s native M-RoPE
positions (as the reference's `generate`), and reads the logits of the first generated position. Texts are formatted
as in U-MARVEL (stripped, first letter upper-cased, a final period added).

## Citation

```bibtex
@article{{li2025umarvel,
  title={{U-MARVEL: Unveiling Key Factors for Universal Multimodal Retrieval via Embedding Learning with MLLMs}},
  author={{Li, Xiaojie and others}},
  journal={{arXiv preprint arXiv:2507.14902}},
  year={{2025}}
}}
```
"""


def write_reranker_repo_folder(
    model: CrossEncoder | str | Path, folder: str | Path, repo_id: str, card: CardData | None = None
) -> Path:
    """Write the Hub repository folder of a re-ranker (nothing is pushed); a LoRA adapter is merged first.

    Args:
        model: A re-ranker (``umarvel_st.reranker_from_mllm``) or the folder it was saved to.
        folder: Empty or missing folder to write.
        repo_id: The Hub id the card's snippet loads.
        card: Card metadata (base model, datasets, license).

    Returns:
        The folder.

    Raises:
        ValueError: If the model is not a U-MARVEL re-ranker.
    """
    if isinstance(model, (str, Path)):
        model = load_reranker(model)
    if not isinstance(model[0], UMarvelRerankerTransformer):
        raise ValueError(
            f"Expected a U-MARVEL re-ranker (first module UMarvelRerankerTransformer), got {type(model[0]).__name__}."
        )
    if isinstance(model[0].model, PeftModel):
        logger.info("Merging the LoRA adapter into the weights (in place) before publishing")
        merge_lora(model)
    folder = Path(folder)
    model.save(str(folder))
    shutil.copytree(ASSET_IMAGES, folder / "assets")
    (folder / "README.md").write_text(render_reranker_card(model, repo_id, card or CardData()), encoding="utf-8")
    return folder
