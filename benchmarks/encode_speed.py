"""Encode speed and peak memory of the U-MARVEL encoder (issue #2, item 8).

Three variants embed the same seeded items on the same offline random Qwen2-VL backbone
(:func:`umarvel_st.testing.build_tiny_backbone`, ``size="tiny"`` and ``size="small"``):

* ``ours``: :func:`umarvel_st.from_mllm` then ``encode_document(items, batch_size=B)`` (``encode_query`` with an
  instruction for the query row);
* ``st``: the plain sentence-transformers stack ``Transformer -> Pooling("mean") -> Normalize`` on the same folder,
  fed the same items (text as ``str``, images as PIL, image+text as ``{"text", "image"}``); targets
  ``ours >= 0.9 x st`` items/s;
* ``loop``: ``ours`` called once per item (``batch_size=1``); target ``ours >= 2 x loop``.

The items of a kind are split into the batches one ``encode(items)`` call forms (sentence-transformers' length
sort), and every batch runs through the three variants back to back, in an order rotated from batch to batch, so
that load from other processes on a shared machine hits them alike; the report gives medians over ``--repeats``
and the ratio of every repeat. Each timed call is split into the input module's ``preprocess`` (chat rendering,
image resize, tokenizer / image processor), its ``forward`` (vision tower and decoder) and the rest (sorting,
pooling, normalisation, copies), so a missed target shows where the time goes. Peak memory is taken in a separate,
untimed pass over the same batches: on CPU the growth of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` after ``malloc_trim`` returns freed heap to the OS; a 1 ms psutil RSS sampler where
``clear_refs`` is not writable), on CUDA ``torch.cuda.max_memory_allocated`` above the memory allocated before the
call; the largest batch's growth is reported.

On a CPU shared with other jobs, pass ``--threads 1``: with one OpenMP thread per core, every op waits whenever
the scheduler parks one of them, which makes small models many times slower and the numbers erratic.

``--device cuda --gpu-7b`` also encodes once in bfloat16 with a random-init Qwen2-VL-7B-size backbone (built on
the GPU from its config; nothing is downloaded) and reports items/s and model FLOPs utilisation. ``--dry-run``
does the config and FLOPs arithmetic of that path on the meta device (no 7B weights are allocated), e.g. on CPU.

Example:
    python benchmarks/encode_speed.py --sizes tiny small --threads 1 --gpu-7b --dry-run
    python benchmarks/encode_speed.py --device cuda --sizes small --gpu-7b
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger("encode_speed")

KINDS: tuple[str, ...] = ("text", "image", "image+text", "query: text+instruction")
VARIANTS: tuple[str, ...] = ("ours", "st", "loop")
#: Minimum items/s ratio of ``ours`` over each other variant.
TARGETS: dict[str, float] = {"st": 0.9, "loop": 2.0}
QUERY_INSTRUCTION = "Find me an everyday image that matches the given caption."
#: (width, height) of the seeded random images, cycled over the items.
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((56, 56), (84, 56), (56, 84), (70, 70), (112, 84), (84, 112), (112, 56))
_WORDS = (
    "a dog cat man woman child bird car train boat bicycle street beach park river mountain snow sky tree house "
    "kitchen table plate bowl fruit red blue green yellow black white old small large sunny rainy busy calm "
    "running sitting standing playing holding riding waiting near next to on in under with the of at morning night"
).split()

#: Peak dense bfloat16 tensor-core TFLOP/s (no sparsity), matched against ``torch.cuda.get_device_name`` in order.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
)
#: Qwen2-VL-7B-Instruct dimensions (decoder and vision tower).
QWEN2_VL_7B: dict[str, Any] = {
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "rope_theta": 1_000_000.0,
    "mrope_section": [16, 24, 24],
    "vision_depth": 32,
    "vision_embed_dim": 1280,
    "vision_num_heads": 16,
    "vision_mlp_ratio": 4,
}


# ---------------------------------------------------------------------------------------------------- inputs
def make_items(kind: str, n_items: int, seed: int = 0) -> list[Any]:
    """Seeded benchmark items of one kind.

    Args:
        kind: One of :data:`KINDS`.
        n_items: Number of items.
        seed: Seed of the numpy generator (pixels, image sizes and captions).

    Returns:
        ``str`` captions (3-12 random words), PIL RGB noise images cycling through :data:`IMAGE_SIZES`, or
        ``{"text", "image"}`` dicts of both.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; use one of {list(KINDS)}.")
    rng = np.random.default_rng(seed)

    def caption() -> str:
        return " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 13))))

    def image(index: int) -> Image.Image:
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))

    if kind in ("text", "query: text+instruction"):
        return [caption() for _ in range(n_items)]
    if kind == "image":
        return [image(index) for index in range(n_items)]
    return [{"text": caption(), "image": image(index)} for index in range(n_items)]


# ---------------------------------------------------------------------------------------------------- measuring
@dataclass
class CallStats:
    """Time spent inside the input module of a model during one or more ``encode`` calls."""

    preprocess_s: float = 0.0
    forward_s: float = 0.0
    batches: int = 0
    tokens: int = 0  # non-pad tokens fed to the decoder
    padded_tokens: int = 0  # including left padding


@contextlib.contextmanager
def instrument(model: torch.nn.Module, stats: CallStats, synchronize: bool = False) -> Iterator[None]:
    """Time the first module's ``preprocess`` and ``forward`` (instance attributes, removed on exit).

    Args:
        model: A ``SentenceTransformer``; ``model[0]`` is its input module.
        stats: Accumulates the times and token counts.
        synchronize: Call ``torch.cuda.synchronize`` around ``forward`` (GPU timing).
    """
    module = model[0]
    preprocess, forward = module.preprocess, module.forward

    def timed_preprocess(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        features = preprocess(*args, **kwargs)
        stats.preprocess_s += time.perf_counter() - start
        stats.batches += 1
        stats.tokens += int(features["attention_mask"].sum())
        stats.padded_tokens += int(features["attention_mask"].numel())
        return features

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = forward(*args, **kwargs)
        if synchronize:
            torch.cuda.synchronize()
        stats.forward_s += time.perf_counter() - start
        return output

    module.preprocess, module.forward = timed_preprocess, timed_forward
    try:
        yield
    finally:
        del module.preprocess, module.forward


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc ``malloc_trim``), so that the next peak is not hidden in it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory growth (MiB) of a block: CUDA allocator peak, or peak RSS of this process on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.method = "torch.cuda.max_memory_allocated" if self.cuda else self._cpu_method()
        self.peak_mib: float = float("nan")
        self._baseline = 0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _cpu_method() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            _status_kib("VmHWM")
            return "VmHWM after clear_refs"
        except OSError:
            return "RSS sampled every 1 ms (psutil)"

    def _rss_bytes(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, self._rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        _release_freed_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._baseline = torch.cuda.memory_allocated()
        elif self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS
            self._baseline = _status_kib("VmRSS") * 1024
        else:
            self._baseline = self._sampled = self._rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self._thread is None:
            peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            self._thread = None
            peak = self._sampled
        self.peak_mib = (peak - self._baseline) / 2**20


# ---------------------------------------------------------------------------------------------------- variants
def load_models(backbone_dir: str, device: str) -> dict[str, Any]:
    """Load ``ours`` (U-MARVEL) and ``st`` (plain sentence-transformers stack) on the same checkpoint folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    import umarvel_st

    ours = umarvel_st.from_mllm(backbone_dir, device=device)
    transformer = Transformer(backbone_dir)
    plain = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()], device=device
    )
    return {"ours": ours, "st": plain}


def encode_fn(models: dict[str, Any], variant: str, kind: str, batch_size: int) -> Callable[[list[Any]], Any]:
    """The call that embeds a list of items for one variant and kind."""
    query = kind.startswith("query")
    model = models["st" if variant == "st" else "ours"]
    kwargs: dict[str, Any] = {"show_progress_bar": False, "convert_to_numpy": True}
    if query:
        kwargs["prompt"] = QUERY_INSTRUCTION
    encode = model.encode_query if query else model.encode_document
    if variant == "loop":
        return lambda items: np.stack([encode([item], batch_size=1, **kwargs)[0] for item in items])
    return lambda items: encode(items, batch_size=batch_size, **kwargs)


@dataclass
class Cell:
    """Raw measurements of one (kind, variant) on one backbone, one entry per repeat."""

    times_s: list[float] = field(default_factory=list)
    preprocess_s: list[float] = field(default_factory=list)
    forward_s: list[float] = field(default_factory=list)
    peak_memory_mib: float = float("nan")
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0

    def summary(self, n_items: int) -> dict[str, Any]:
        """Raw lists plus medians, per-item milliseconds and token throughput."""
        total = statistics.median(self.times_s)
        pre = statistics.median(self.preprocess_s)
        fwd = statistics.median(self.forward_s)
        rest = [t - p - f for t, p, f in zip(self.times_s, self.preprocess_s, self.forward_s, strict=True)]
        return {
            "times_s": self.times_s,
            "preprocess_s": self.preprocess_s,
            "forward_s": self.forward_s,
            "items_per_s": [n_items / t for t in self.times_s],
            "median_items_per_s": n_items / total,
            "best_items_per_s": n_items / min(self.times_s),
            "median_tokens_per_s": self.tokens / total,
            "median_ms_per_item": {
                "total": 1e3 * total / n_items,
                "preprocess": 1e3 * pre / n_items,
                "forward": 1e3 * fwd / n_items,
                "other": 1e3 * statistics.median(rest) / n_items,
            },
            "tokens_per_item": self.tokens / n_items,
            "padded_tokens_per_item": self.padded_tokens / n_items,
            "batches": self.batches,
            "peak_memory_mib": self.peak_memory_mib,
        }


def rendered_prompt(model: Any, item: Any, prompt: str | None) -> str:
    """The text the decoder sees for one item (padding-free, as the tokenizer decodes it)."""
    features = model.preprocess([item], prompt=prompt)
    return model[0].tokenizer.decode(features["input_ids"][0][features["attention_mask"][0].bool()])


def measure(call: Callable[[], Any], model: Any, device: str, memory: bool = False) -> tuple[CallStats, float, float]:
    """Run ``call`` once: wall time, time split and token counts, and (with ``memory``) peak memory growth.

    Returns:
        The time split, the wall time in seconds, and the peak memory growth in MiB (NaN without ``memory``).
    """
    stats = CallStats()
    synchronize = device.startswith("cuda")
    meter = PeakMemory(device) if memory else contextlib.nullcontext()
    with instrument(model, stats, synchronize), meter:
        start = time.perf_counter()
        call()
        if synchronize:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return stats, elapsed, meter.peak_mib if memory else float("nan")


def encode_batches(items: list[Any], batch_size: int) -> list[list[Any]]:
    """Split ``items`` into the batches one ``encode(items, batch_size)`` call forms.

    sentence-transformers sorts the inputs by a length key (longest first) before batching; sorting here with the
    same key lets the benchmark time (and interleave the variants on) one batch at a time while every variant still
    sees the batches a single call over all items would build (up to the order of ties).
    """
    from sentence_transformers.base.model import BaseModel

    ordered = sorted(items, key=lambda item: -BaseModel._input_length(item))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def bench_backbone(size: str, args: argparse.Namespace, workdir: Path, progress: tqdm) -> dict[str, Any]:
    """Build one backbone and time every (kind, variant) ``args.repeats`` times, the variants interleaved per batch.

    For every batch of a kind the three variants run back to back, in an order rotated from batch to batch, so
    that a burst of load from other processes falls on all of them; a repeat's time is the sum over its batches,
    and the ratios are also given per repeat.
    """
    from umarvel_st.testing import build_tiny_backbone

    start = time.perf_counter()
    backbone_dir = str(build_tiny_backbone("qwen2_vl", workdir / f"qwen2_vl-{size}", size=size))
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    models = load_models(backbone_dir, args.device)
    load_s = time.perf_counter() - start
    model_of = {"ours": models["ours"], "st": models["st"], "loop": models["ours"]}

    items = {kind: make_items(kind, args.n_items, seed=args.seed) for kind in KINDS}
    batches = {kind: encode_batches(items[kind], args.batch_size) for kind in KINDS}
    calls = {(k, v): encode_fn(models, v, k, args.batch_size) for k in KINDS for v in VARIANTS}
    cells = {(k, v): Cell() for k in KINDS for v in VARIANTS}

    for (kind, variant), call in calls.items():  # warm-up: the first batch, which also checks the output
        progress.set_postfix_str(f"{size} warm-up {kind} / {variant}")
        output = call(batches[kind][0])
        if output.shape[0] != len(batches[kind][0]) or not np.isfinite(output).all():
            raise RuntimeError(f"{variant} returned shape {output.shape} or non-finite values for {kind}.")
        progress.update()

    for repeat in range(args.repeats):
        for kind in KINDS:
            progress.set_postfix_str(f"{size} repeat {repeat + 1}/{args.repeats} {kind}")
            gc.collect()
            totals = {variant: CallStats() for variant in VARIANTS}
            elapsed = dict.fromkeys(VARIANTS, 0.0)
            for index, batch in enumerate(batches[kind]):
                shift = (repeat + index) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    stats, seconds, _ = measure(
                        lambda call=calls[kind, variant], batch=batch: call(batch), model_of[variant], args.device
                    )
                    elapsed[variant] += seconds
                    total = totals[variant]
                    total.preprocess_s += stats.preprocess_s
                    total.forward_s += stats.forward_s
                    total.batches += stats.batches
                    total.tokens += stats.tokens
                    total.padded_tokens += stats.padded_tokens
            for variant in VARIANTS:
                cell, total = cells[kind, variant], totals[variant]
                cell.times_s.append(elapsed[variant])
                cell.preprocess_s.append(total.preprocess_s)
                cell.forward_s.append(total.forward_s)
                cell.tokens, cell.padded_tokens, cell.batches = total.tokens, total.padded_tokens, total.batches
                progress.update()

    # Peak memory in a separate, untimed pass: resetting the peak returns freed heap to the OS, and the page
    # faults that follow would slow the timed calls down.
    for (kind, variant), call in calls.items():
        progress.set_postfix_str(f"{size} memory {kind} / {variant}")
        gc.collect()
        cells[kind, variant].peak_memory_mib = max(
            measure(lambda call=call, batch=batch: call(batch), model_of[variant], args.device, memory=True)[2]
            for batch in batches[kind]
        )
        progress.update()

    results: dict[str, Any] = {}
    for kind in KINDS:
        row: dict[str, Any] = {variant: cells[kind, variant].summary(args.n_items) for variant in VARIANTS}
        ours = row["ours"]
        row["ratios"] = {}
        for other, target in TARGETS.items():
            ratio = ours["median_items_per_s"] / row[other]["median_items_per_s"]
            per_repeat = [a / b for a, b in zip(ours["items_per_s"], row[other]["items_per_s"], strict=True)]
            row["ratios"][other] = {
                "ours_over": ratio,
                "target": target,
                "pass": ratio >= target,
                "per_repeat": per_repeat,
                "best_of_repeats": ours["best_items_per_s"] / row[other]["best_items_per_s"],
                "tokens_per_s_ours_over": ours["median_tokens_per_s"] / row[other]["median_tokens_per_s"],
                "tokens_per_item_ours_over": ours["tokens_per_item"] / row[other]["tokens_per_item"],
            }
        results[kind] = row
    examples = {
        kind: {
            variant: rendered_prompt(models[variant], items[kind][0], QUERY_INSTRUCTION if "query" in kind else None)
            for variant in ("ours", "st")
        }
        for kind in ("text", "query: text+instruction")
    }
    text_config = models["ours"][0].config.text_config
    return {
        "size": size,
        "backbone": "qwen2_vl",
        "hidden_size": text_config.hidden_size,
        "num_hidden_layers": text_config.num_hidden_layers,
        "parameters": sum(p.numel() for p in models["ours"][0].model.parameters()),
        "dtype": str(next(models["ours"].parameters()).dtype),
        "build_s": build_s,
        "load_s": load_s,
        "memory_method": PeakMemory(args.device).method,
        "prompt_examples": examples,
        "kinds": results,
    }


# ---------------------------------------------------------------------------------------------------- 7B on GPU
def qwen2_vl_config(dims: dict[str, Any], token_ids: dict[str, int]) -> Any:
    """A ``Qwen2VLConfig`` with the given decoder / vision dimensions and the token ids of a tokenizer."""
    from transformers import Qwen2VLConfig

    text_config = {
        "vocab_size": dims["vocab_size"],
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "max_window_layers": dims["num_hidden_layers"],
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": dims["rope_theta"],
            "mrope_section": dims["mrope_section"],
        },
        **{key: token_ids[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")},
    }
    vision_config = {
        "depth": dims["vision_depth"],
        "embed_dim": dims["vision_embed_dim"],
        "num_heads": dims["vision_num_heads"],
        "mlp_ratio": dims["vision_mlp_ratio"],
        "hidden_size": dims["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **token_ids)


def peak_bf16_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a card from :data:`PEAK_BF16_TFLOPS`, or ``None`` for an unknown card."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def bench_7b(args: argparse.Namespace, workdir: Path, dims: dict[str, Any] | None = None) -> dict[str, Any]:
    """One bfloat16 encode of image+text items with a random-init Qwen2-VL of ``dims`` (7B by default).

    The tokenizer and processor come from a tiny offline backbone; its decoder and vision tower are replaced by
    one built from the 7B config directly on the device (random init). With ``args.dry_run`` the model is built
    on the meta device: only the parameter count, tokens and FLOPs per item are computed.
    """
    from transformers import Qwen2VLModel

    import umarvel_st
    from umarvel_st.testing import build_tiny_backbone

    dims = dims or QWEN2_VL_7B
    tiny_dir = str(build_tiny_backbone("qwen2_vl", workdir / "qwen2_vl-7b-tokenizer", size="tiny"))
    device = "cpu" if args.dry_run else args.device
    model = umarvel_st.from_mllm(tiny_dir, device=device, model_kwargs={"dtype": torch.bfloat16})
    encoder = model[0]
    text_ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    vision_ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    token_ids = {key: getattr(encoder.config.text_config, key) for key in text_ids}
    token_ids.update({key: getattr(encoder.config, key) for key in vision_ids})
    config = qwen2_vl_config(dims, token_ids)

    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta" if args.dry_run else device):
            big = Qwen2VLModel(config).eval()
    finally:
        torch.set_default_dtype(previous_dtype)
    parameters = sum(p.numel() for p in big.parameters())
    embedding = big.get_input_embeddings().weight.numel()
    flop_parameters = parameters - embedding  # the token embedding is a lookup, not a matmul

    items = make_items("image+text", args.n_items, seed=args.seed)
    tokens = sum(
        int(encoder.preprocess(items[i : i + args.batch_size])["attention_mask"].sum())
        for i in range(0, len(items), args.batch_size)
    )
    flops = 2 * flop_parameters * tokens
    result: dict[str, Any] = {
        "dry_run": bool(args.dry_run),
        "dims": dims,
        "parameters": parameters,
        "embedding_parameters": embedding,
        "flop_parameters": flop_parameters,
        "n_items": args.n_items,
        "batch_size": args.batch_size,
        "tokens": tokens,
        "tokens_per_item": tokens / args.n_items,
        "flops": flops,
        "peak_bf16_tflops_table": dict(PEAK_BF16_TFLOPS),
    }
    if args.dry_run:
        return result

    encoder.model = big  # the decoder and vision tower that run; tokenizer and processor stay
    for module in big.language_model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False  # as UMarvelTransformer.__init__ does for the loaded backbone
    with torch.no_grad():  # random init: N(0, 0.02) matrices, unit norm scales, zero biases
        for module in big.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if parameter.ndim > 1:
                    parameter.normal_(0.0, 0.02)
                else:
                    parameter.fill_(1.0 if "Norm" in type(module).__name__ and name == "weight" else 0.0)
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    peak = args.peak_tflops or peak_bf16_tflops(device_name)
    model.encode_document(items[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)
    meter = PeakMemory(device)
    with meter:
        start = time.perf_counter()
        output = model.encode_document(items, batch_size=args.batch_size, show_progress_bar=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    result.update(
        device_name=device_name,
        time_s=elapsed,
        items_per_s=args.n_items / elapsed,
        tokens_per_s=tokens / elapsed,
        peak_bf16_tflops=peak,
        mfu=None if peak is None else flops / elapsed / (peak * 1e12),
        peak_memory_mib=meter.peak_mib,
        finite=bool(np.isfinite(output).all()),
    )
    return result


# ---------------------------------------------------------------------------------------------------- report
def machine_info(device: str) -> dict[str, Any]:
    """CPU model, core counts, library versions and the accelerator, for the report."""
    import sentence_transformers
    import transformers

    import umarvel_st

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "umarvel_st": umarvel_st.__version__,
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "shared_machine": True,
    }


def code_state() -> dict[str, Any]:
    """The git commit the benchmark ran on and the library files that differed from it (others may be editing)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=root, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "uncommitted_library_files": [line[3:] for line in git("status", "--porcelain", "umarvel_st").splitlines()],
    }


def _verdict(ratio: dict[str, Any]) -> str:
    return f"{ratio['ours_over']:.2f}x {'PASS' if ratio['pass'] else 'MISS'} (>= {ratio['target']:g}x)"


def _findings(backbone: dict[str, Any]) -> list[str]:
    """Data-driven notes on each missed target: the time split per item, the tokens each variant runs, and which
    of the two (longer input, or the work itself) explains the gap."""
    notes = []
    for kind, row in backbone["kinds"].items():
        for other, ratio in row["ratios"].items():
            if ratio["pass"]:
                continue
            ours, them = row["ours"]["median_ms_per_item"], row[other]["median_ms_per_item"]
            split = ", ".join(
                f"{part} {ours[part]:.2f} vs {them[part]:.2f}" for part in ("preprocess", "forward", "other")
            )
            head = (
                f"- **{kind}, ours vs {other}**: {_verdict(ratio)}; per repeat "
                f"{', '.join(f'{r:.2f}' for r in ratio['per_repeat'])}; "
                f"best of repeats {ratio['best_of_repeats']:.2f}x. "
                f"Per item, ms ours vs {other}: {split}."
            )
            if other == "loop":
                overhead = them["preprocess"] + them["other"] - ours["preprocess"] - ours["other"]
                cause = (
                    f"Same tokens. The forward is {100 * them['forward'] / them['total']:.0f} % of the loop's time "
                    "and "
                    f"batching makes it only {them['forward'] / ours['forward']:.2f}x faster (compute-bound on the "
                    f"CPU); batching saves {overhead:.2f} ms of per-call overhead per item, so even with no overhead "
                    f"at all ours could reach only {them['total'] / ours['forward']:.2f}x the loop here."
                )
            else:
                per_token = ratio["tokens_per_s_ours_over"]
                longer = ratio["tokens_per_item_ours_over"]
                cause = (
                    f"Ours feeds {row['ours']['tokens_per_item']:.1f} tokens per item, st "
                    f"{row[other]['tokens_per_item']:.1f} ({longer:.2f}x; padded "
                    f"{row['ours']['padded_tokens_per_item']:.1f} vs {row[other]['padded_tokens_per_item']:.1f}); "
                    f"per token ours runs at {per_token:.2f}x st's speed"
                )
                cause += (
                    ", so the gap is the longer U-MARVEL input, not slower code."
                    if per_token >= ratio["target"]
                    else ", so besides the longer input ours is slower per token in this run."
                )
            notes.append(f"{head} {cause}")
    return notes


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: set-up, one table per backbone, time split, findings, and the 7B GPU section."""
    machine, args = report["machine"], report["args"]
    load = ", ".join(f"{x:.2f}" for x in machine["load_average_start"] or [])
    load_end = ", ".join(f"{x:.2f}" for x in report["load_average_end"] or [])
    lines = [
        "# Encode speed: U-MARVEL encoder vs plain sentence-transformers vs one-item loop",
        "",
        f"Command (from the repository root): `{report['command']}`",
        "",
        f"- Machine: {machine['cpu_model']} ({machine['logical_cores']} logical cores, {machine['usable_cores']} "
        f"usable), torch threads {machine['torch_threads']} (`--threads`), device `{machine['device']}`"
        + (f" ({machine['gpu']})" if machine["gpu"] else "")
        + f", {machine['platform']}.",
        "- Other processes may share the cores (the load averages below tell: above the core count, they competed), "
        "so the variants are interleaved batch by batch (each batch of a "
        "kind runs through the three variants back to back, order rotated from batch to batch; the batches are the "
        "ones a single `encode(items)` call forms); tables give medians over "
        f"{args['repeats']} repeats, and the notes the ratio of every repeat. "
        f"Load average (1, 5, 15 min) at start {load}, at end {load_end}.",
        f"- Code: commit `{(report['code']['commit'] or 'unknown')[:12]}`"
        + (
            ", with uncommitted or untracked library files (other sessions' work in progress): "
            + ", ".join(f"`{path}`" for path in report["code"]["uncommitted_library_files"])
            if report["code"]["uncommitted_library_files"]
            else ", clean library tree"
        )
        + ".",
        f"- Versions: torch {machine['torch']}, transformers {machine['transformers']}, sentence-transformers "
        f"{machine['sentence_transformers']}, umarvel-st {machine['umarvel_st']}, Python {machine['python']}.",
        f"- Inputs: {args['n_items']} seeded items per kind (seed {args['seed']}), batch size {args['batch_size']}; "
        "images are random RGB noise of " + ", ".join(f"{w}x{h}" for w, h in IMAGE_SIZES) + " (cycled), captions "
        f'3-12 random words; the query row adds the instruction "{QUERY_INSTRUCTION}". One warm-up batch per cell.',
        "- Variants: **ours** = `umarvel_st.from_mllm(dir)` + `encode_document(items, batch_size=B)` "
        "(`encode_query(items, prompt=instruction)` for the query row); **st** = `SentenceTransformer(modules="
        '[Transformer(dir), Pooling(dim, "mean"), Normalize()])` + `encode_document` / `encode_query` with the same '
        "arguments on the same items; **loop** = ours called once per item (`batch_size=1`).",
        f"- Total runtime {report['runtime_s']:.0f} s. Every raw number (each repeat) is in `encode_speed.json`.",
        "",
    ]
    for backbone in report["backbones"]:
        lines += [
            f"## Backbone `qwen2_vl` size `{backbone['size']}` (hidden {backbone['hidden_size']}, "
            f"{backbone['num_hidden_layers']} layers, {backbone['parameters'] / 1e6:.2f} M parameters, "
            f"{backbone['dtype'].removeprefix('torch.')})",
            "",
            "Items/s are medians; `ours / st` and `ours / loop` are ratios of those medians against the targets; "
            "`per token` = ours tokens/s over st tokens/s (diagnostic, no target); peak MiB = growth of the peak "
            f"memory during the largest batch, in a separate untimed pass ({backbone['memory_method']}); "
            "tokens/item = non-pad tokens fed to the decoder.",
            "",
            "| kind | ours items/s | st items/s | loop items/s | ours / st | ours / loop | per token ours / st "
            "| peak MiB ours / st / loop | tokens/item ours / st |",
            "|---|---:|---:|---:|---|---|---:|---:|---:|",
        ]
        for kind, row in backbone["kinds"].items():
            speeds = " | ".join(f"{row[v]['median_items_per_s']:.1f}" for v in VARIANTS)
            memory = " / ".join(f"{row[v]['peak_memory_mib']:.0f}" for v in VARIANTS)
            lines.append(
                f"| {kind} | {speeds} | {_verdict(row['ratios']['st'])} | {_verdict(row['ratios']['loop'])} | "
                f"{row['ratios']['st']['tokens_per_s_ours_over']:.2f}x | {memory} | "
                f"{row['ours']['tokens_per_item']:.1f} / {row['st']['tokens_per_item']:.1f} |"
            )
        lines += [
            "",
            "Where the time goes (median ms per item): `preprocess` = the input module's `preprocess` (chat template, "
            "image pre-resize, tokenizer, image processor), `forward` = its forward (vision tower + decoder), "
            "`other` = the rest of `encode` (sorting, pooling, normalisation, copies, the Python loop).",
            "",
            "| kind | variant | total | preprocess | forward | other | batches |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for kind, row in backbone["kinds"].items():
            for variant in VARIANTS:
                ms = row[variant]["median_ms_per_item"]
                lines.append(
                    f"| {kind} | {variant} | {ms['total']:.2f} | {ms['preprocess']:.2f} | {ms['forward']:.2f} | "
                    f"{ms['other']:.2f} | {row[variant]['batches']} |"
                )
        findings = _findings(backbone)
        lines += ["", "Missed targets: " + ("none." if not findings else ""), *findings, ""]
    if report["backbones"]:
        examples = report["backbones"][0]["prompt_examples"]
        lines += [
            "## What each variant feeds the decoder",
            "",
            "The first item of the text and query rows, decoded from the `input_ids` each variant builds (padding "
            "removed). Ours renders the U-MARVEL format the official weights were trained with; st renders the "
            "plain chat template (its prompt goes into the system turn).",
            "",
        ]
        for kind, variants in examples.items():
            for variant, text in variants.items():
                lines += [f"{kind}, {variant}:", "", "```text", text, "```", ""]
    gpu = report.get("gpu_7b")
    if gpu:
        dims = gpu["dims"]
        title = "## Qwen2-VL-7B-size backbone, bfloat16 (`--gpu-7b`)"
        lines += [
            title + (": dry run, config and FLOPs arithmetic only, nothing timed" if gpu["dry_run"] else ""),
            "",
            f"Random-init Qwen2-VL-7B config (hidden {dims['hidden_size']}, {dims['num_hidden_layers']} layers, "
            f"{dims['num_attention_heads']} heads, {dims['num_key_value_heads']} kv heads, intermediate "
            f"{dims['intermediate_size']}, vocab {dims['vocab_size']}; vision depth {dims['vision_depth']}, embed dim "
            f"{dims['vision_embed_dim']}): {gpu['parameters'] / 1e9:.3f} B parameters without lm_head, of which "
            f"{gpu['flop_parameters'] / 1e9:.3f} B outside the token embedding (a lookup) count for FLOPs. "
            f"{gpu['n_items']} image+text items in batches of {gpu['batch_size']}: {gpu['tokens']} tokens "
            f"({gpu['tokens_per_item']:.1f} per item), FLOPs = 2 x params x tokens = {gpu['flops'] / 1e12:.2f} TFLOP. "
            "MFU = FLOPs / time / peak dense bf16 FLOP/s of the card ("
            + ", ".join(f"{name} {tflops:g}" for name, tflops in gpu["peak_bf16_tflops_table"].items())
            + " TFLOP/s).",
            "",
        ]
        if not gpu["dry_run"]:
            mfu = "unknown card (pass --peak-tflops)" if gpu["mfu"] is None else f"{100 * gpu['mfu']:.1f} %"
            lines += [
                "| card | items/s | tokens/s | time s | MFU | peak MiB |",
                "|---|---:|---:|---:|---:|---:|",
                f"| {gpu['device_name']} | {gpu['items_per_s']:.1f} | {gpu['tokens_per_s']:.0f} | "
                f"{gpu['time_s']:.2f} | {mfu} | {gpu['peak_memory_mib']:.0f} |",
                "",
            ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", nargs="*", default=["tiny", "small"], help="backbone sizes of build_tiny_backbone")
    parser.add_argument("--batch-size", type=int, default=16, help="encode batch size of ours and st")
    parser.add_argument("--n-items", type=int, default=64, help="items per kind")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (median reported)")
    parser.add_argument("--output", default="benchmarks/results", help="folder for encode_speed.json / .md")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of images and captions")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's); 1 on a shared CPU"
    )
    parser.add_argument("--gpu-7b", action="store_true", help="also encode once with a random Qwen2-VL-7B in bf16")
    parser.add_argument("--dry-run", action="store_true", help="7B path: config and FLOPs arithmetic only")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s of an unlisted card")
    args = parser.parse_args(argv)
    if args.gpu_7b and not args.dry_run and not args.device.startswith("cuda"):
        parser.error("--gpu-7b needs --device cuda (or --dry-run for the arithmetic only).")
    if args.batch_size < 1 or args.n_items < 1 or args.repeats < 1:
        parser.error("--batch-size, --n-items and --repeats must be positive.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``encode_speed.json`` and ``encode_speed.md`` to ``--output``.

    Returns:
        The report as written to JSON.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    import transformers

    transformers.logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    report: dict[str, Any] = {
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "code": code_state(),
        "args": vars(args),
        "targets": TARGETS,
        "backbones": [],
    }
    start = time.perf_counter()
    steps = len(args.sizes) * len(KINDS) * len(VARIANTS) * (args.repeats + 2)
    with tempfile.TemporaryDirectory(prefix="encode_speed-") as workdir, tqdm(total=steps, desc="encode_speed") as bar:
        for size in args.sizes:
            report["backbones"].append(bench_backbone(size, args, Path(workdir), bar))
        if args.gpu_7b:
            bar.set_postfix_str("7B" + (" dry run" if args.dry_run else ""))
            report["gpu_7b"] = bench_7b(args, Path(workdir))
    report["runtime_s"] = time.perf_counter() - start
    report["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "encode_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (output / "encode_speed.md").write_text(markdown + "\n")
    logger.info("%s\nWrote %s and %s", markdown, output / "encode_speed.json", output / "encode_speed.md")
    return report


if __name__ == "__main__":
    main()
