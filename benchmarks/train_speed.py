"""Training step time and peak memory vs batch size, with and without the cached loss and gradient checkpointing.

Runs real optimizer steps of the U-MARVEL contrastive loss (learnable temperature, LoRA) on a tiny or small random
Qwen2-VL built offline, on image+text pairs, and writes ``train_speed.json`` and ``train_speed.md``.

    python benchmarks/train_speed.py --size small --batch-sizes 4 8 16 --steps 3 --output benchmarks/results

Peak memory is the peak RSS growth of the process on CPU (``ru_maxrss`` is monotone, so every configuration runs in a
fresh subprocess) and ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = {
    "plain": {"cached": False, "checkpointing": False},
    "checkpointing": {"cached": False, "checkpointing": True},
    "cached": {"cached": True, "checkpointing": False},
    "cached+checkpointing": {"cached": True, "checkpointing": True},
}


def measure(size: str, batch_size: int, variant: str, steps: int, device: str) -> dict[str, Any]:
    """Time ``steps`` optimizer steps (after one warm-up step) of one configuration in this process."""
    import torch

    import umarvel_st
    from umarvel_st.testing import build_tiny_backbone, make_test_image
    from umarvel_st.train.lora import apply_lora
    from umarvel_st.train.losses import CachedInfoNCELoss, InfoNCELoss

    options = VARIANTS[variant]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model = umarvel_st.from_mllm(str(build_tiny_backbone("qwen2_vl", folder, size=size)), generation_prompt=False)
    model.to(device)
    apply_lora(model, r=16, alpha=32)
    if options["checkpointing"]:
        model[0].model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    loss_fn = (
        CachedInfoNCELoss(model, mini_batch_size=max(1, batch_size // 4))
        if options["cached"]
        else InfoNCELoss(model, learnable_temperature=True)
    )
    optimizer = torch.optim.AdamW([p for p in loss_fn.parameters() if p.requires_grad], lr=1e-4)
    anchors = [f"a caption about scene number {i} with some words" for i in range(batch_size)]
    positives = [{"text": None, "image": make_test_image(84, 84, seed=i)} for i in range(batch_size)]

    def step() -> None:
        features = [model.preprocess(anchors), model.preprocess(positives)]
        features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()} for f in features]
        loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    times = []
    for _ in range(steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return {
        "size": size,
        "batch_size": batch_size,
        "variant": variant,
        "step_seconds": statistics.median(times),
        "pairs_per_second": batch_size / statistics.median(times),
        "peak_mib": round(peak_mib, 1),
    }


def report(rows: list[dict[str, Any]], command: str, environment: dict[str, Any]) -> str:
    lines = [
        "# Training speed: step time and peak memory",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {environment['machine']}; torch {environment['torch']}; device {environment['device']}. "
        "One LoRA (r=16) optimizer step of the U-MARVEL contrastive loss (learnable temperature) on image+text pairs "
        "(text anchors, 84x84 image positives); median of the timed steps after one warm-up step. Peak memory: "
        "peak RSS growth on CPU (includes the model's activations and the allocator's caches), allocated memory on GPU.",
        "",
        "| backbone | batch | variant | step (s) | pairs/s | peak memory (MiB) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']} | {row['batch_size']} | {row['variant']} | {row['step_seconds']:.3f} | "
            f"{row['pairs_per_second']:.1f} | {row['peak_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--one", nargs=2, metavar=("BATCH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child process measuring one configuration
        print(json.dumps(measure(args.size, int(args.one[0]), args.one[1], args.steps, args.device)))
        return 0

    from tqdm import tqdm

    rows = []
    configs = [(batch, variant) for batch in args.batch_sizes for variant in args.variants]
    for batch, variant in tqdm(configs, desc="configurations"):
        child = [sys.executable, __file__, "--size", args.size, "--steps", str(args.steps), "--device", args.device]
        output = subprocess.run(child + ["--one", str(batch), variant], capture_output=True, text=True, check=True)
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    environment = {
        "machine": f"{cpu or platform.processor()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    command = "python benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    output_dir = Path(args.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "train_speed.json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
    (output_dir / "train_speed.md").write_text(report(rows, command, environment))
    print(report(rows, command, environment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
