"""Write a random Qwen2-VL re-ranker checkpoint larger than the fixture one (same tokenizer, processor, template).

The fixture checkpoint ``umarvel_st/assets/tiny-rerank-qwen2vl`` is 2 layers of width 64. This writes its config with
another width, depth, MLP width and head count (key-value heads = half the heads; M-RoPE sections rescaled to the
head size), random weights (seed 0), and copies the fixture's tokenizer and processor files.

Usage (from the repository root): ``python benchmarks/results/ablation_demo/rerank_learn/build_reranker.py
HIDDEN LAYERS INTERMEDIATE HEADS OUTPUT``, e.g. ``128 4 256 4 runs/rerank-learn/r128x4``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

FIXTURE = Path(__file__).parents[4] / "umarvel_st" / "assets" / "tiny-rerank-qwen2vl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("hidden", "layers", "intermediate", "heads"):
        parser.add_argument(name, type=int)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()

    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        max_window_layers=args.layers,
        intermediate_size=args.intermediate,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads // 2,
    )
    half = args.hidden // args.heads // 2  # rotary frequencies per head, split over (time, height, width)
    config["rope_scaling"]["mrope_section"] = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config["vision_config"]["hidden_size"] = args.hidden  # the merger's output feeds the decoder
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config)).float()
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    for file in FIXTURE.iterdir():
        if file.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(file, args.output / file.name)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters in {args.output}")


if __name__ == "__main__":
    main()
