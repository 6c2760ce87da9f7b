"""Write a Qwen2-VL ``...ForConditionalGeneration`` folder that starts a re-ranker from a U-MARVEL embedder.

The demo's only trained weights are the stage-3 embedder (``umarvel_st/assets/umarvel-demo``). It has no LM head and
its tokenizer splits "Yes" and "No" (``Y es``, ``N o``), while the re-ranker reads the logits of single "Yes" / "No"
tokens. So: the backbone (decoder and vision tower) is kept; "Yes" and "No" are added as tokens, their embedding
rows the mean of their pieces' rows; the LM head starts as a copy of the input embeddings (logit = h . e_token).

Usage (from the repository root): ``python benchmarks/results/ablation_demo/rerank_learn/from_embedder.py
umarvel_st/assets/umarvel-demo runs/rerank-learn/init-embedder``
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("embedder", help="a saved U-MARVEL Qwen2-VL embedder folder")
    parser.add_argument("output", help="the folder to write")
    args = parser.parse_args()

    config = AutoConfig.from_pretrained(args.embedder)
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    model = Qwen2VLForConditionalGeneration.from_pretrained(args.embedder, config=config, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(args.embedder)
    tokenizer = processor.tokenizer
    pieces = {word: tokenizer(word, add_special_tokens=False)["input_ids"] for word in ("Yes", "No")}
    tokenizer.add_tokens(list(pieces))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight  # (vocab, hidden)
    with torch.no_grad():
        for word, ids in pieces.items():
            embeddings[tokenizer.convert_tokens_to_ids(word)] = embeddings[ids].mean(0)
        model.lm_head.weight.copy_(embeddings)
    model.save_pretrained(args.output)
    processor.save_pretrained(args.output)


if __name__ == "__main__":
    main()
