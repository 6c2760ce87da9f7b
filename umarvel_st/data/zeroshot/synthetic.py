"""``make_synthetic_zeroshot``: a tiny offline copy of every zero-shot dataset in its published layout.

Each dataset gets a few seeded images and captions drawn and worded as in the synthetic M-BEIR benchmark
(:mod:`umarvel_st.data.synthetic`: one coloured shape per image, so the demo model trained there can score), written exactly where and how the real dataset stores them (see :data:`readers.LAYOUTS`); the two video
datasets get short GIF clips (decoded with PyAV like the real .mp4 / .avi files). A ``SYNTHETIC`` marker file tells the
reports that the numbers are not the real benchmark's.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..synthetic import CELLS, COLOURS, SHAPES, Obj, caption, render


def _scene(index: int) -> tuple[str, str, str]:
    """``(colour, shape, cell)`` of synthetic item ``index``: colours cycle first, so neighbours differ in colour."""
    colours = list(COLOURS)[:6]
    return colours[index % 6], SHAPES[(index // 6) % len(SHAPES)], CELLS[index % len(CELLS)]


def _image(index: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    colour, shape, cell = _scene(index)
    return render((Obj(cell, colour, shape),), rng, size, "white")


def _caption(index: int) -> str:
    colour, shape, cell = _scene(index)
    return caption((Obj(cell, colour, shape),))


def _save(image: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path.name


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def _gif(index: int, rng: np.random.Generator, path: Path, frames: int) -> None:
    images = [_image(index, rng, 48) for _ in range(frames)]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def make_synthetic_zeroshot(root: str | Path, *, seed: int = 0, size: int = 6) -> dict[str, int]:
    """Write the synthetic copies under ``root/<dataset>/``; returns the item count per dataset.

    Args:
        root: Output folder (created).
        seed: Random seed (same seed, same bytes).
        size: Images (or videos) per dataset, at least 4.
    """
    import torch

    if size < 4:
        raise ValueError(f"size must be at least 4, got {size}.")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "SYNTHETIC").write_text("written by umarvel make-synthetic --zeroshot\n", encoding="utf-8")
    rng = np.random.default_rng(seed)
    n = size

    folder = root / "sharegpt4v"
    rows = [
        {"image_name": _save(_image(i, rng), folder / "val_data" / f"sa_{i}.jpg"), "caption": _caption(i)}
        for i in range(n)
    ]
    _json(folder / "datas_for_validation.json", rows)

    folder = root / "urban1k"
    for i in range(1, n + 1):
        _save(_image(i, rng, 84), folder / "image" / f"{i}.jpg")
        (folder / "caption").mkdir(parents=True, exist_ok=True)
        (folder / "caption" / f"{i}.txt").write_text(f" {_caption(i)} \nsecond line\n", encoding="utf-8")

    folder = root / "flickr30k"
    for i in range(n):
        _save(_image(i, rng), folder / "images" / f"{i}.png")
    _json(
        folder / "flickr_text.json",
        [f'"{_caption(j // 5)}"' if j % 5 == 0 else _caption(j // 5) for j in range(5 * n)],
    )

    folder = root / "circo"
    images = [
        {"id": 1000 + i, "file_name": _save(_image(i, rng), folder / "images/unlabeled2017" / f"{i:012d}.jpg")}
        for i in range(n)
    ]
    _json(folder / "annotations/image_info_unlabeled2017.json", {"images": images})
    _json(
        folder / "annotations/val.json",
        [
            {
                "id": q,
                "reference_img_id": 1000 + q,
                "relative_caption": f"make it {_scene(q + 1)[0]}",
                "target_img_id": 1000 + q + 1,
                "gt_img_ids": [1000 + q + 1, 1000 + (q + 3) % n],
            }
            for q in range(n - 1)
        ],
    )

    folder = root / "genecis"
    for subset in ("change_object", "focus_object"):
        samples = []
        for q in range(n - 3):
            ids = [q, q + 1, q + 2, q + 3]
            for i in ids:
                _save(_image(i, rng), folder / "val2017" / f"{i:012d}.jpg")
            samples.append(
                {
                    "reference": {"val_image_id": ids[0]},
                    "target": {"val_image_id": ids[1]},
                    "gallery": [{"val_image_id": i} for i in ids[2:]],
                    "condition": _scene(q + 1)[0],
                }
            )
        _json(folder / f"annotations/{subset}.json", samples)
    for subset in ("change_attribute", "focus_attribute"):
        samples = []
        for q in range(n - 3):
            for k in range(4):
                _save(_image(q + k, rng), folder / "vg" / subset / f"{500 + q}_{q}_{k}.jpg")
            samples.append(
                {
                    "reference": {"image_id": 500 + q},
                    "target": {"image_id": 500 + q},
                    "gallery": [{"image_id": 500 + q}, {"image_id": 500 + q}],
                    "condition": _scene(q + 1)[1],
                }
            )
        _json(folder / f"annotations/{subset}.json", samples)

    folder = root / "visdial"
    questions = ["what colour is it", "what shape is it"]
    answers = list(COLOURS) + list(SHAPES)
    dialogs = []
    for i in range(n):
        _save(_image(i, rng), folder / "VisualDialog_val2018" / f"VisualDialog_val2018_{i + 7:012d}.jpg")
        colour, shape, _ = _scene(i)
        dialogs.append(
            {
                "image_id": i + 7,
                "caption": "unused caption",
                "dialog": [
                    {"question": 0, "answer": answers.index(colour)},
                    {"question": 1, "answer": answers.index(shape)},
                ],
            }
        )
    _json(folder / "visdial_1.0_val.json", {"data": {"questions": questions, "answers": answers, "dialogs": dialogs}})

    folder = root / "fashioniq_multiturn"
    names = [_save(_image(i, rng), folder / "images" / f"B00{i}.jpg").removesuffix(".jpg") for i in range(n)]
    _json(folder / "image_splits/split.all.val.json", names)
    _json(
        folder / "data/all.val.json",
        [
            {
                "target": ["dress", names[(q + 2) % n]],
                "reference": [
                    ["dress", ["is more " + _scene(q + 1)[0], ""], names[q]],
                    ["dress", ["is " + _scene(q + 2)[0], "has a " + _scene(q + 2)[1]], names[(q + 1) % n]],
                ],
            }
            for q in range(n - 1)
        ],
    )

    folder = root / "ccneg"
    paths, annotations = [], []
    for i in range(n):
        _save(_image(i, rng), folder / "images" / f"{i:09d}.jpg")
        paths.append(f"/workspace/datasets/cc3m/images/{i:09d}.jpg")
        annotations.append(
            {
                "json": {"caption": _caption(i)},
                "sop_data": {"negative-prompt": _caption(i + 1).replace(": ", ", ")},
            }
        )
    torch.save({"image_paths": paths, "annotations": annotations}, folder / "ccneg_preprocessed.pt")

    folder = root / "sugar_crepe"
    for i in range(n):
        _save(_image(i, rng), folder / "images/val2017" / f"{i:012d}.jpg")
    for subset in ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"):
        _json(
            folder / f"annotations/{subset}.json",
            {
                str(i): {"filename": f"{i:012d}.jpg", "caption": _caption(i), "negative_caption": _caption(i + 1)}
                for i in range(n)
            },
        )

    folder = root / "msrvtt"
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    with (folder / "MSRVTT_JSFUSION_test.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i in range(n):
            _gif(i, rng, folder / "videos" / f"video{7000 + i}.gif", frames=6 + i % 3)
            writer.writerow([f"ret{i}", f"msr{7000 + i}", f"video{7000 + i}", _caption(i)])

    folder = root / "msvd"
    ids = [f"clip_{i}" for i in range(n)]
    for i, video_id in enumerate(ids):
        _gif(i, rng, folder / "YouTubeClips" / f"{video_id}.gif", frames=12 if i else 5)
    (folder / "test_list.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    with (folder / "raw-captions.pkl").open("wb") as file:
        pickle.dump(
            {video_id: [_caption(i).split(), ["a", "video", _scene(i)[0]]] for i, video_id in enumerate(ids)}, file
        )
    return {"datasets": 11, "items_per_dataset": n}
