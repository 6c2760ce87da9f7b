"""Deepen a Qwen2-VL re-ranker checkpoint: keep its layers and append N fresh decoder layers whose output projections
(attention ``o_proj``, MLP ``down_proj``) start at zero, so the deeper model starts as the same function.

Usage (from the repository root): ``python benchmarks/results/ablation_demo/rerank_learn/deepen.py
runs/rerank-learn/init-embedder 2 runs/rerank-learn/init-embedder-deep4`` (the embedder start of
``from_embedder.py`` with 2 more layers).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a Qwen2-VL ...ForConditionalGeneration folder")
    parser.add_argument("extra", type=int, help="decoder layers to append")
    parser.add_argument("output", help="the folder to write")
    args = parser.parse_args()

    source = Qwen2VLForConditionalGeneration.from_pretrained(args.source, dtype=torch.float32)
    config = AutoConfig.from_pretrained(args.source)
    text = config.text_config
    layers = text.num_hidden_layers
    text.num_hidden_layers = text.max_window_layers = layers + args.extra
    if text.layer_types is not None:
        text.layer_types = [text.layer_types[0]] * (layers + args.extra)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).float()
    model.load_state_dict(source.state_dict(), strict=False)  # the appended layers keep their random weights
    with torch.no_grad():
        for layer in model.model.language_model.layers[layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(args.output)
    AutoProcessor.from_pretrained(args.source).save_pretrained(args.output)


if __name__ == "__main__":
    main()
