"""Readers of the zero-shot datasets in their published on-disk layouts (``shared/docs/zeroshot-spec.md`` section 2).

Each reader takes the dataset folder and returns a :class:`ZeroShotData`: the raw query and candidate records (text,
image paths, video path, FashionIQ rounds) in dataset order, and the relevance structure (positive candidate rows
per query, or a per-query candidate list whose first entry is the target). Templates (instructions, formatting,
suffixes) are applied later by the task definitions, so a reader only knows the files.

A missing file raises a ``ValueError`` that names it and shows the expected layout; a query whose target is not in
the candidate pool is refused with its row.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: CC-Neg: only the last rows of ``ccneg_preprocessed.pt`` are the evaluation split (``datasets_ccneg.py:23``).
CCNEG_EVAL_ROWS = 40_000
SUGAR_CREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
GENECIS_SUBSETS = ("change_object", "focus_object", "change_attribute", "focus_attribute")


@dataclass(frozen=True)
class Raw:
    """One dataset record before templating: text, image files, a video file, or FashionIQ ``(image, text)`` rounds."""

    text: str = ""
    images: tuple[str, ...] = ()
    video: str | None = None
    rounds: tuple[tuple[str, str], ...] = ()


@dataclass
class ZeroShotData:
    """Queries, candidates and relevance of one dataset (subset).

    ``positives[i]`` are the candidate rows relevant to query ``i`` (corpus search); ``galleries[i]`` is query
    ``i``'s own candidate list, target first (GeneCIS galleries, ITM ``[positive, negative]`` pairs).
    """

    queries: list[Raw]
    candidates: list[Raw]
    positives: list[list[int]] | None = None
    galleries: list[list[int]] | None = None
    files: list[Path] = field(default_factory=list)


LAYOUTS: dict[str, str] = {
    "sharegpt4v": "datas_for_validation.json (list of {image_name, caption}), val_data/<image_name>",
    "urban1k": "image/<i>.jpg and caption/<i>.txt for i = 1..N",
    "flickr30k": "flickr_text.json (5 captions per image, caption j -> image j // 5), images/<i>.png",
    "circo": "annotations/image_info_unlabeled2017.json, annotations/<split>.json, images/unlabeled2017/<file_name>",
    "genecis": "annotations/<subset>.json, val2017/<id:012d>.jpg (COCO subsets), vg/<subset>/<id>_<row>_<k>.jpg",
    "visdial": "visdial_1.0_val.json, VisualDialog_val2018/VisualDialog_val2018_<image_id:012d>.jpg",
    "fashioniq_multiturn": "data/all.val.json, image_splits/split.all.val.json, images/<name>.jpg",
    "ccneg": "ccneg_preprocessed.pt (image_paths, annotations), images under the folder",
    "sugar_crepe": "annotations/<subset>.json ({id: {filename, caption, negative_caption}}), images/val2017/<file>",
    "msrvtt": "MSRVTT_JSFUSION_test.csv (video_id, sentence), videos/<video_id>.mp4 (or .gif)",
    "msvd": "test_list.txt, raw-captions.pkl, YouTubeClips/<id>.avi (or .gif)",
}


def _need(root: Path, relative: str, dataset: str) -> Path:
    path = root / relative
    if not path.exists():
        raise ValueError(
            f"{dataset}: {path} is missing. Expected layout under {root}: {LAYOUTS[dataset]}. "
            "Point --data at the folder that holds the dataset as published (or run umarvel make-synthetic --zeroshot)."
        )
    return path


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def _video_file(folder: Path, stem: str, extensions: tuple[str, ...], dataset: str) -> str:
    for extension in extensions:
        path = folder / f"{stem}{extension}"
        if path.is_file():
            return str(path)
    raise ValueError(f"{dataset}: no video {stem}{'|'.join(extensions)} in {folder}. Expected {LAYOUTS[dataset]}.")


def read_sharegpt4v(root: Path) -> ZeroShotData:
    """ShareGPT4V: row i's caption describes row i's image (both directions)."""
    path = _need(root, "datas_for_validation.json", "sharegpt4v")
    rows = _read_json(path)
    images = _need(root, "val_data", "sharegpt4v")
    return ZeroShotData(
        [Raw(text=row["caption"]) for row in rows],
        [Raw(images=(str(images / row["image_name"]),)) for row in rows],
        positives=[[i] for i in range(len(rows))],
        files=[path],
    )


def read_urban1k(root: Path) -> ZeroShotData:
    """Urban1K: ``caption/<i>.txt`` (first line, stripped) describes ``image/<i>.jpg``, i = 1..N."""
    captions = _need(root, "caption", "urban1k")
    images = _need(root, "image", "urban1k")
    count = len(list(captions.glob("*.txt")))
    if count == 0:
        raise ValueError(f"urban1k: no caption files in {captions}. Expected {LAYOUTS['urban1k']}.")
    texts = []
    for i in range(1, count + 1):
        lines = _need(root, f"caption/{i}.txt", "urban1k").read_text(encoding="utf-8").splitlines()
        texts.append(lines[0].strip() if lines else "")
        _need(root, f"image/{i}.jpg", "urban1k")
    return ZeroShotData(
        [Raw(text=text) for text in texts],
        [Raw(images=(str(images / f"{i}.jpg"),)) for i in range(1, count + 1)],
        positives=[[i] for i in range(count)],
        files=sorted(captions.glob("*.txt")),
    )


def read_flickr30k(root: Path) -> ZeroShotData:
    """Flickr30K 1K test: 5 captions per image, caption j belongs to image j // 5 (queries = captions)."""
    path = _need(root, "flickr_text.json", "flickr30k")
    captions = _read_json(path)
    if len(captions) % 5:
        raise ValueError(f"flickr30k: {path} holds {len(captions)} captions; expected 5 per image (a multiple of 5).")
    count = len(captions) // 5
    for i in range(count):
        _need(root, f"images/{i}.png", "flickr30k")
    return ZeroShotData(
        [Raw(text=text) for text in captions],
        [Raw(images=(str(root / "images" / f"{i}.png"),)) for i in range(count)],
        positives=[[j // 5] for j in range(len(captions))],
        files=[path],
    )


def read_circo(root: Path, split: str = "val") -> ZeroShotData:
    """CIRCO: (reference image, relative caption) -> every unlabeled2017 image, positives ``gt_img_ids``."""
    info_path = _need(root, "annotations/image_info_unlabeled2017.json", "circo")
    split_path = _need(root, f"annotations/{split}.json", "circo")
    images = _read_json(info_path)["images"]
    row_of = {image["id"]: row for row, image in enumerate(images)}
    folder = _need(root, "images/unlabeled2017", "circo")
    queries, positives = [], []
    for position, query in enumerate(_read_json(split_path)):
        ids = [query["reference_img_id"], *query["gt_img_ids"]]
        missing = [image_id for image_id in ids if image_id not in row_of]
        if missing:
            raise ValueError(
                f"circo: query {position} of {split_path} names image ids {missing} that are not in {info_path}; "
                "every reference and target must be in the pool."
            )
        if query["gt_img_ids"][:1] != [query["target_img_id"]]:
            raise ValueError(
                f"circo: query {position} of {split_path}: gt_img_ids must start with target_img_id "
                f"{query['target_img_id']}, got {query['gt_img_ids'][:3]}."
            )
        reference = folder / images[row_of[query["reference_img_id"]]]["file_name"]
        queries.append(Raw(text=query["relative_caption"], images=(str(reference),)))
        positives.append([row_of[image_id] for image_id in query["gt_img_ids"]])
    return ZeroShotData(
        queries,
        [Raw(images=(str(folder / image["file_name"]),)) for image in images],
        positives=positives,
        files=[info_path, split_path],
    )


def read_genecis(root: Path, subset: str) -> ZeroShotData:
    """GeneCIS subset: per query, the candidates are its target then its own gallery (pool deduplicated)."""
    if subset not in GENECIS_SUBSETS:
        raise ValueError(f"genecis: unknown subset {subset!r}; use one of {list(GENECIS_SUBSETS)}.")
    path = _need(root, f"annotations/{subset}.json", "genecis")
    coco = subset.endswith("object")
    pool: dict[str, int] = {}
    candidates: list[Raw] = []
    queries, galleries = [], []

    def image_path(entry: dict[str, Any], row: int, k: int) -> str:
        if coco:
            return str(root / "val2017" / f"{int(entry['val_image_id']):012d}.jpg")
        return str(root / "vg" / subset / f"{entry['image_id']}_{row}_{k}.jpg")

    def add(file: str) -> int:
        if file not in pool:
            pool[file] = len(candidates)
            candidates.append(Raw(images=(file,)))
        return pool[file]

    for row, sample in enumerate(_read_json(path)):
        reference = image_path(sample["reference"], row, 0)
        queries.append(Raw(text=sample["condition"], images=(reference,)))
        target = add(image_path(sample["target"], row, 1))
        galleries.append([target, *(add(image_path(g, row, 2 + i)) for i, g in enumerate(sample["gallery"]))])
    for file in [*pool, *(query.images[0] for query in queries)]:
        if not Path(file).is_file():
            raise ValueError(f"genecis: image {file} is missing. Expected layout under {root}: {LAYOUTS['genecis']}.")
    return ZeroShotData(queries, candidates, galleries=galleries, files=[path])


def read_visdial(root: Path) -> ZeroShotData:
    """VisDial val: the whole dialog (``Q: ...? A: ....`` rounds, caption unused) -> its image."""
    path = _need(root, "visdial_1.0_val.json", "visdial")
    data = _read_json(path)["data"]
    questions, answers = data["questions"], data["answers"]
    folder = _need(root, "VisualDialog_val2018", "visdial")
    texts, images = [], []
    for dialog in data["dialogs"]:
        parts = []
        for turn in dialog["dialog"]:
            parts += [f"Q: {questions[turn['question']]}?", f"A: {answers[turn['answer']]}."]
        texts.append(" ".join(parts))
        images.append(str(folder / f"VisualDialog_val2018_{dialog['image_id']:012d}.jpg"))
    return ZeroShotData(
        [Raw(text=text) for text in texts],
        [Raw(images=(image,)) for image in images],
        positives=[[i] for i in range(len(texts))],
        files=[path],
    )


def read_fashioniq_multiturn(root: Path) -> ZeroShotData:
    """Multi-round FashionIQ: rounds of (image, feedback) -> the target among all split images."""
    query_path = _need(root, "data/all.val.json", "fashioniq_multiturn")
    split_path = _need(root, "image_splits/split.all.val.json", "fashioniq_multiturn")
    names = _read_json(split_path)
    row_of = {name: row for row, name in enumerate(names)}
    queries, positives = [], []
    for position, sample in enumerate(_read_json(query_path)):
        target = sample["target"][1]
        if target not in row_of:
            raise ValueError(
                f"fashioniq_multiturn: query {position} of {query_path} has target {target!r}, which is not in "
                f"{split_path}; the target must be in the candidate pool."
            )
        rounds = tuple(
            (str(root / "images" / f"{turn[2]}.jpg"), " and ".join(text for text in turn[1] if text))
            for turn in sample["reference"]
        )
        queries.append(Raw(rounds=rounds))
        positives.append([row_of[target]])
    return ZeroShotData(
        queries,
        [Raw(images=(str(root / "images" / f"{name}.jpg"),)) for name in names],
        positives=positives,
        files=[query_path, split_path],
    )


def read_ccneg(root: Path, last_rows: int = CCNEG_EVAL_ROWS) -> ZeroShotData:
    """CC-Neg: the last ``last_rows`` rows; texts interleaved caption, negative (commas removed)."""
    import torch

    path = _need(root, "ccneg_preprocessed.pt", "ccneg")
    data = torch.load(path, weights_only=True)
    image_paths = data["image_paths"][-last_rows:]
    annotations = data["annotations"][-last_rows:]
    texts = []
    for row in annotations:
        texts += [row["json"]["caption"], row["sop_data"]["negative-prompt"].replace(",", "")]
    images = [str(root / p.replace("/workspace/datasets/cc3m/", "")) for p in image_paths]
    return ZeroShotData(
        [Raw(images=(image,)) for image in images],
        [Raw(text=text) for text in texts],
        galleries=[[2 * i, 2 * i + 1] for i in range(len(images))],
        files=[path],
    )


def read_sugar_crepe(root: Path, subset: str) -> ZeroShotData:
    """Sugar-Crepe subset: each image against its caption and its negative caption."""
    if subset not in SUGAR_CREPE_SUBSETS:
        raise ValueError(f"sugar_crepe: unknown subset {subset!r}; use one of {list(SUGAR_CREPE_SUBSETS)}.")
    path = _need(root, f"annotations/{subset}.json", "sugar_crepe")
    rows = list(_read_json(path).values())
    texts = []
    for row in rows:
        texts += [row["caption"], row["negative_caption"]]
    return ZeroShotData(
        [Raw(images=(str(root / "images" / "val2017" / row["filename"]),)) for row in rows],
        [Raw(text=text) for text in texts],
        galleries=[[2 * i, 2 * i + 1] for i in range(len(rows))],
        files=[path],
    )


def read_msrvtt(root: Path) -> ZeroShotData:
    """MSR-VTT 1k-A: row i's sentence describes row i's video."""
    import csv

    path = _need(root, "MSRVTT_JSFUSION_test.csv", "msrvtt")
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    folder = _need(root, "videos", "msrvtt")
    return ZeroShotData(
        [Raw(text=row["sentence"]) for row in rows],
        [Raw(video=_video_file(folder, row["video_id"], (".mp4", ".gif"), "msrvtt")) for row in rows],
        positives=[[i] for i in range(len(rows))],
        files=[path],
    )


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers only: a pickle that names any class or function (code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise ValueError(
            f"msvd: raw-captions.pkl refers to {module}.{name}; only plain dicts, lists and strings load."
        )


def read_msvd(root: Path) -> ZeroShotData:
    """MSVD test: every caption of every test video is a query; its positive is its video."""
    list_path = _need(root, "test_list.txt", "msvd")
    captions_path = _need(root, "raw-captions.pkl", "msvd")
    ids = [line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with captions_path.open("rb") as file:
        captions = _PlainUnpickler(file).load()
    folder = _need(root, "YouTubeClips", "msvd")
    queries, positives = [], []
    for row, video_id in enumerate(ids):
        if video_id not in captions:
            raise ValueError(f"msvd: video {video_id!r} of {list_path} has no captions in {captions_path}.")
        for tokens in captions[video_id]:
            queries.append(Raw(text=" ".join(tokens)))
            positives.append([row])
    return ZeroShotData(
        queries,
        [Raw(video=_video_file(folder, video_id, (".avi", ".gif"), "msvd")) for video_id in ids],
        positives=positives,
        files=[list_path, captions_path],
    )


READERS: dict[str, Callable[..., ZeroShotData]] = {
    "sharegpt4v": read_sharegpt4v,
    "urban1k": read_urban1k,
    "flickr30k": read_flickr30k,
    "circo": read_circo,
    "genecis": read_genecis,
    "visdial": read_visdial,
    "fashioniq_multiturn": read_fashioniq_multiturn,
    "ccneg": read_ccneg,
    "sugar_crepe": read_sugar_crepe,
    "msrvtt": read_msrvtt,
    "msvd": read_msvd,
}
