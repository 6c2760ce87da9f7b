"""Re-ranker scoring speed: plain vs prefix-shared, one query against many candidates (issue 9, item 6).

Scoring 50 candidates for one query repeats the query prefix (system turn, the pointwise instruction, the query image
and text) 50 times; attention is causal, so ``share_prefix=True`` computes the prefix's keys and values (and the
query image's vision features) once per batch and reuses them. Both variants score the same pairs with
``model.predict(pairs, batch_size=B, share_prefix=...)`` on a random Qwen2-VL backbone of the "small" size of
:data:`umarvel_st.testing.SIZES` (hidden 512, 4 layers) that uses the re-ranker test fixture's tokenizer (where "Yes"
and "No" are single tokens) and Qwen2-VL-7B-Instruct's image-processor pixel budget. Queries: text (a 60-word
request) and image (448x448, 256 image tokens, + instruction). Candidates: 50 per query, a third of them images
(112 to 224 px a side, 16 to 64 tokens), the rest texts of 5 to 40 words. Variants alternate within each repeat; the report gives
median pairs/s and the largest score difference between the two paths.

Example:
    python benchmarks/rerank_speed.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import umarvel_st
from umarvel_st.testing import SIZES, make_test_image

FIXTURE_CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-rerank-qwen2vl"
RESULTS = Path(__file__).parent / "results"
WORDS = "red blue green shirt dress dog cat street river mountain wool blanket striped cotton soft warm tall".split()


def build_backbone(folder: Path, size: str, seed: int = 0) -> Path:
    """A random Qwen2-VL ``...ForConditionalGeneration`` of ``size`` with the fixture's tokenizer and processor."""
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    dims = SIZES[size]
    config = AutoConfig.from_pretrained(FIXTURE_CHECKPOINT)
    text = config.text_config
    text.hidden_size, text.intermediate_size = dims["hidden_size"], dims["intermediate_size"]
    text.num_hidden_layers, text.num_attention_heads = dims["num_hidden_layers"], dims["num_attention_heads"]
    text.num_key_value_heads = dims["num_key_value_heads"]
    text.layer_types = ["full_attention"] * dims["num_hidden_layers"]
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    text.rope_parameters["mrope_section"] = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    vision = config.vision_config
    vision.depth, vision.embed_dim, vision.num_heads = dims["vision_depth"], dims["vision_hidden_size"], 4
    vision.hidden_size = dims["hidden_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    for file in FIXTURE_CHECKPOINT.iterdir():
        if file.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(file, folder / file.name)
    # Qwen2-VL-7B-Instruct's image-processor budget, so that images cost what they cost there (up to 300 tokens
    # after U-MARVEL's pre-resize) instead of the fixture's 16.
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    processor_config.update(min_pixels=3136, max_pixels=12845056)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config))
    return folder


def candidates(count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    items: list = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 41))))
        if index % 3 == 0:
            side = [112, 168, 224]
            items.append({"image": make_test_image(int(rng.choice(side)), int(rng.choice(side)), seed=index)})
        else:
            items.append(text)
    return items


def queries(seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {
        "text": {"text": " ".join(rng.choice(WORDS, size=60)), "instruction": "Find a product image for the request."},
        "image": {"image": make_test_image(448, 448, seed=99), "instruction": "Find a caption for this image."},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS / "rerank_speed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_backbone(Path(tmp), args.size)
        model = umarvel_st.reranker_from_mllm(str(folder), device=args.device)
        report: dict = {
            "command": "python benchmarks/rerank_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpu_threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "load_average_1min_at_start": os.getloadavg()[0],
                "device": args.device,
            },
            "versions": {"torch": torch.__version__, "umarvel_st": umarvel_st.__version__},
            "backbone": {
                "size": args.size,
                **SIZES[args.size],
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            "candidates_per_query": args.candidates,
            "batch_size": args.batch_size,
            "results": {},
        }
        docs = candidates(args.candidates, seed=1)
        for kind, query in queries(seed=2).items():
            pairs = [(query, doc) for doc in docs]
            features = model[0].preprocess(pairs[: args.batch_size])
            scores, times = {}, {"plain": [], "shared": []}
            model.predict(pairs[:4], batch_size=4)  # warm-up
            for _ in range(args.repeats):
                for variant in ("plain", "shared"):
                    start = time.perf_counter()
                    scores[variant] = model.predict(
                        pairs, batch_size=args.batch_size, share_prefix=variant == "shared"
                    )
                    times[variant].append(time.perf_counter() - start)
            rates = {variant: len(pairs) / statistics.median(values) for variant, values in times.items()}
            report["results"][kind] = {
                "shared_prefix_tokens": int(features["shared_prefix_length"]),
                "mean_tokens_per_pair": float(features["attention_mask"].sum(-1).float().mean()),
                "pairs_per_s": {variant: round(rate, 1) for variant, rate in rates.items()},
                "speedup": round(rates["shared"] / rates["plain"], 2),
                "seconds_per_repeat": times,
                "max_abs_score_diff": float(np.abs(scores["shared"] - scores["plain"]).max()),
            }
            print(kind, json.dumps(report["results"][kind]["pairs_per_s"]), report["results"][kind]["speedup"])
    report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [
        "# Re-ranker scoring speed: plain vs prefix-shared",
        "",
        f"`{report['command']}` ({report['date']}; {report['machine']['platform']}, {args.device}, "
        f"{report['machine']['cpu_threads']} torch threads; backbone `{args.size}`, "
        f"{report['backbone']['parameters']:,} parameters; {args.candidates} candidates per query, "
        f"batch {args.batch_size}). Load average (1 min) {report['machine']['load_average_1min_at_start']:.1f} at "
        f"start, {report['machine']['load_average_1min_at_end']:.1f} at end on {report['machine']['cpus']} CPUs: "
        "on a shared machine the absolute rates are noisy; the two variants alternate, so their ratio is fairer.",
        "",
        "| query | shared prefix tokens | mean tokens / pair | plain pairs/s | shared pairs/s | speedup | max score diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in report["results"].items():
        lines.append(
            f"| {kind} | {row['shared_prefix_tokens']} | {row['mean_tokens_per_pair']:.0f} | "
            f"{row['pairs_per_s']['plain']} | {row['pairs_per_s']['shared']} | {row['speedup']}x | "
            f"{row['max_abs_score_diff']:.1e} |"
        )
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
