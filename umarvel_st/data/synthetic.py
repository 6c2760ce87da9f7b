"""A small synthetic benchmark in M-BEIR's on-disk layout, for end-to-end tests and quick training runs.

``umarvel make-synthetic DIR`` (or :func:`make_synthetic_mbeir`) renders scenes of coloured shapes with PIL and
writes them in the real M-BEIR layout (see :mod:`umarvel_st.data.mbeir`): per-task query files for a ``train``
and a ``test`` split, a local candidate pool per task, union pools (``cand_pool/global``), qrels,
``instructions/query_instructions.tsv`` (four phrasings per task) and the images. Output is byte-for-byte
deterministic for a given seed and settings.

A scene holds one to three objects, each a shape (circle, square, triangle, star, diamond, cross), a colour
(red, green, blue, yellow, purple, orange) and a cell (top left, top right, center, bottom left, bottom right),
drawn on one of four background colours with a little jitter. Texts are short captions in three phrasings
(``"two shapes: a red circle at the top left and ..."``, ``"top left: red circle; ..."``, and for text queries
``"a picture of a circle in crimson in the upper left corner ..."``, with other words for colours and cells),
counts, and "same scene but ..." edits.

The tasks reuse real M-BEIR task names and dataset ids (``"9:n"`` ids are "MSCOCO-like", and so on) so the
same code paths run as on the real benchmark, but the data is synthetic, and scores on it are not comparable
with published M-BEIR numbers:

==================  ===================  ==========================================================================
task                modalities           query -> positive
==================  ===================  ==========================================================================
``mscoco_task0``    text -> image        paraphrased caption -> the scene's image
``webqa_task1``     text -> text         paraphrased caption -> the canonical caption (or the listing)
``webqa_task2``     text -> image,text   paraphrased caption -> image + a title naming only count and colours
``mscoco_task3``    image -> text        image -> canonical caption (or the listing)
``nights_task4``    image -> image       image -> the same scene re-rendered on another background
``oven_task6``      image,text -> text   image + "what is in the upper left corner?" -> "the object at the top left
                                         is a red circle" (or "name any shape" -> every object's statement)
``cirr_task7``      image,text -> image  image + "same scene but ..." -> the edited scene's image
==================  ===================  ==========================================================================

Every query's scene has near-miss neighbours in the pool (one object recoloured, reshaped, moved, added or
removed; for ``cirr_task7`` also the unedited reference and other edits of it), so word overlap or pixel
similarity alone does not find the positive: an untrained model scores near chance (hit@5 ~ 3% on a
200-candidate pool), while the tasks stay learnable by a tiny model in minutes. About a quarter of the queries
have two positives (a second rendering or a second phrasing). Test scenes never occur as train queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .mbeir import MBEIRTask

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER_FILE = "synthetic.json"
# Largest query count per task and split and pool size: far below the ~480k distinct scenes, so that drawing unique
# scenes always ends; and largest image side (a 100k-pixel side would need tens of GB).
MAX_COUNT = 10_000
MAX_IMAGE_SIZE = 1024

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (230, 200, 30),
    "purple": (148, 103, 189),
    "orange": (255, 127, 14),
}
CELLS = ("top left", "top right", "center", "bottom left", "bottom right")
# Cell centre as fractions of the image side.
CELL_CENTRES: dict[str, tuple[float, float]] = {
    "top left": (0.22, 0.22),
    "top right": (0.78, 0.22),
    "center": (0.5, 0.5),
    "bottom left": (0.22, 0.78),
    "bottom right": (0.78, 0.78),
}
CELL_PARAPHRASES = {
    "top left": "upper left corner",
    "top right": "upper right corner",
    "center": "middle",
    "bottom left": "lower left corner",
    "bottom right": "lower right corner",
}
# The query phrasing names colours with these words, so matching words alone does not find the positive.
COLOUR_PARAPHRASES = {
    "red": "crimson",
    "green": "emerald",
    "blue": "navy",
    "yellow": "golden",
    "purple": "violet",
    "orange": "amber",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "grey": (190, 190, 190),
    "beige": (235, 222, 190),
    "sky": (200, 225, 245),
}
COUNT_WORDS = ("no", "one", "two", "three")

TASKS = ("mscoco_task0", "webqa_task1", "webqa_task2", "mscoco_task3", "nights_task4", "oven_task6", "cirr_task7")
SPLIT_SEEDS = {"test": 0, "train": 1}

# Four phrasings per task, keyed like the real file: (query modality, candidate modality, dataset name).
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "mscoco_task0": (
        "Find the picture of shapes that matches the given description.",
        "Retrieve the image whose shapes, colours and positions fit this caption.",
        "Identify the rendered scene described by the following text.",
        "Which image shows the shapes described here?",
    ),
    "webqa_task1": (
        "Find the caption that describes the same scene as this text.",
        "Retrieve a description of the same shapes, colours and positions.",
        "Identify the text that restates the following scene description.",
        "Which caption describes the same arrangement of shapes?",
    ),
    "webqa_task2": (
        "Find the titled picture that matches the given description.",
        "Retrieve the image and title pair that shows the described shapes.",
        "Identify the captioned scene described by the following text.",
        "Which titled image shows the shapes described here?",
    ),
    "mscoco_task3": (
        "Find a caption describing the shapes in this picture.",
        "Retrieve the text that lists the shapes, colours and positions of the image.",
        "Identify the description that fits the given scene.",
        "Which caption describes this picture?",
    ),
    "nights_task4": (
        "Find another picture of the same scene.",
        "Retrieve the image with the same shapes in the same places, whatever the background.",
        "Identify a re-rendering of the given scene.",
        "Which image shows exactly these shapes?",
    ),
    "oven_task6": (
        "Answer the question about the picture with a statement about one of its shapes.",
        "Retrieve the statement that answers this question about the image.",
        "Identify the fact about the scene that the question asks for.",
        "Which statement answers the question about this picture?",
    ),
    "cirr_task7": (
        "Find the picture that applies the described change to the given scene.",
        "Retrieve the image of this scene after the modification in the text.",
        "Identify the edited scene that the instruction describes.",
        "Which image shows the scene with the requested change?",
    ),
}
DATASET_DISPLAY = {"mscoco": "MSCOCO", "webqa": "WebQA", "nights": "NIGHTS", "oven": "OVEN", "cirr": "CIRR"}


@dataclass(frozen=True)
class Obj:
    """One shape in a scene."""

    cell: str
    colour: str
    shape: str


Scene = tuple[Obj, ...]  # objects sorted by cell order


def _scene(objects: list[Obj] | tuple[Obj, ...]) -> Scene:
    return tuple(sorted(objects, key=lambda obj: CELLS.index(obj.cell)))


def random_scene(rng: np.random.Generator) -> Scene:
    """One to three objects in distinct cells, uniform shapes and colours."""
    count = int(rng.integers(1, 4))
    cells = rng.choice(len(CELLS), size=count, replace=False)
    return _scene([Obj(CELLS[int(c)], str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))) for c in cells])


def _at(cell: str) -> str:
    return "in the center" if cell == "center" else f"at the {cell}"


def _count(scene: Scene) -> str:
    return f"{COUNT_WORDS[len(scene)]} shape{'s' if len(scene) > 1 else ''}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """Canonical caption: ``"two shapes: a red circle at the top left and a blue square in the center"``."""
    return f"{_count(scene)}: " + _join([f"a {o.colour} {o.shape} {_at(o.cell)}" for o in scene])


def paraphrase(scene: Scene) -> str:
    """Query phrasing with other words for colours and cells, objects in reverse order:
    ``"a picture of a square in navy in the middle and a circle in crimson in the upper left corner"``."""
    return "a picture of " + _join(
        [f"a {o.shape} in {COLOUR_PARAPHRASES[o.colour]} in the {CELL_PARAPHRASES[o.cell]}" for o in scene[::-1]]
    )


def listing(scene: Scene) -> str:
    """Terse phrasing: ``"top left: red circle; center: blue square"``."""
    return "; ".join(f"{o.cell}: {o.colour} {o.shape}" for o in scene)


def title(scene: Scene) -> str:
    """What a ``webqa_task2`` candidate's text says: count and colours only (``"two shapes in blue and red"``)."""
    return f"{_count(scene)} in " + _join(sorted({o.colour for o in scene}))


def statement(obj: Obj) -> str:
    """An ``oven_task6`` candidate: ``"the object at the top left is a red circle"``."""
    return f"the object {_at(obj.cell)} is a {obj.colour} {obj.shape}"


def edit(scene: Scene, rng: np.random.Generator) -> tuple[Scene, str]:
    """One random edit and its "same scene but ..." text (recolour, reshape, move, add or remove an object)."""
    ops = ["recolour", "reshape", "move"] if len(scene) < len(CELLS) else ["recolour", "reshape"]
    if len(scene) < 3:
        ops.append("add")
    if len(scene) > 1:
        ops.append("remove")
    op = str(rng.choice(ops))
    free = [cell for cell in CELLS if cell not in {o.cell for o in scene}]
    if op == "add":
        new = Obj(str(rng.choice(free)), str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
        return _scene([*scene, new]), f"same scene but with a {new.colour} {new.shape} {_at(new.cell)}"
    index = int(rng.integers(len(scene)))
    old = scene[index]
    rest = [o for i, o in enumerate(scene) if i != index]
    name = f"the {old.colour} {old.shape} {_at(old.cell)}"
    if op == "remove":
        return _scene(rest), f"same scene but without {name}"
    if op == "recolour":
        colour = str(rng.choice([c for c in COLOURS if c != old.colour]))
        return _scene([*rest, Obj(old.cell, colour, old.shape)]), f"same scene but {name} is {colour}"
    if op == "reshape":
        shape = str(rng.choice([s for s in SHAPES if s != old.shape]))
        return _scene([*rest, Obj(old.cell, old.colour, shape)]), f"same scene but {name} becomes a {shape}"
    cell = str(rng.choice(free))
    return _scene([*rest, Obj(cell, old.colour, old.shape)]), f"same scene but {name} moves to the {cell}"


def render(scene: Scene, rng: np.random.Generator, size: int, background: str) -> Image.Image:
    """Draw a scene: each object near its cell centre, with a little jitter in position and size."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for obj in scene:
        fx, fy = CELL_CENTRES[obj.cell]
        x = fx * size + rng.uniform(-0.04, 0.04) * size
        y = fy * size + rng.uniform(-0.04, 0.04) * size
        r = size * rng.uniform(0.095, 0.125)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        elif obj.shape == "star":
            points = []
            for i in range(10):
                radius = r if i % 2 == 0 else r * 0.45
                angle = -math.pi / 2 + i * math.pi / 5
                points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
            draw.polygon(points, fill=fill)
        else:  # cross
            w = r * 0.38
            draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
            draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    return image


@dataclass
class _Writer:
    """Allocates ids, writes images and collects the records of every file."""

    root: Path
    size: int
    next_qid: dict[int, int] = field(default_factory=dict)
    next_did: dict[int, int] = field(default_factory=dict)
    images: int = 0

    def qid(self, dataset_id: int) -> str:
        number = self.next_qid.get(dataset_id, 1)
        self.next_qid[dataset_id] = number + 1
        return f"{dataset_id}:{number}"

    def did(self, dataset_id: int) -> str:
        number = self.next_did.get(dataset_id, 1)
        self.next_did[dataset_id] = number + 1
        return f"{dataset_id}:{number}"

    def image(self, scene: Scene, rng: np.random.Generator, name: str, avoid: str | None = None) -> tuple[str, str]:
        """Render and save; returns (relative path, background)."""
        background = str(rng.choice([b for b in BACKGROUNDS if b != avoid]))
        relative = f"mbeir_images/synthetic/{name}.png"
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        render(scene, rng, self.size, background).save(path, format="PNG")
        self.images += 1
        return relative, background


def _src(scene: Scene, **extra: Any) -> str:
    return json.dumps({"scene": [[o.cell, o.colour, o.shape] for o in scene], **extra}, sort_keys=True)


@dataclass
class _TaskOutput:
    queries: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    qrels: list[str] = field(default_factory=list)


def _variants(scene: Scene, rng: np.random.Generator, count: int, exclude: set[Scene]) -> list[Scene]:
    """Up to ``count`` distinct one-edit neighbours of a scene, none in ``exclude``."""
    found: list[Scene] = []
    for _ in range(count * 20):
        if len(found) == count:
            break
        variant, _ = edit(scene, rng)
        if variant not in exclude and variant not in found:
            found.append(variant)
    return found


def _build_task(
    task: MBEIRTask,
    split: str,
    writer: _Writer,
    rng: np.random.Generator,
    num_queries: int,
    pool_size: int,
    exclude: set[Scene],
) -> tuple[_TaskOutput, set[Scene]]:
    """Queries, candidates and qrels of one task and split; returns them and the query scenes used."""
    out = _TaskOutput()
    folder = f"{task.name}/{split}"
    did_of_statement: dict[Obj, str] = {}

    def add_candidate(scene: Scene, kind: str, avoid: str | None = None, **extra: Any) -> tuple[str, str | None]:
        """Append a candidate of the task's modality; returns (did, background of its image)."""
        did = writer.did(task.dataset_id)
        text: str | None = None
        image: str | None = None
        background = None
        if kind in {"caption", "listing"}:
            text = caption(scene) if kind == "caption" else listing(scene)
        if kind in {"image", "pair"}:
            image, background = writer.image(scene, rng, f"{folder}/c{did.replace(':', '_')}", avoid)
        if kind == "pair":
            text = title(scene)
        modality = "image,text" if kind == "pair" else ("image" if image else "text")
        out.candidates.append(
            {"did": did, "txt": text, "img_path": image, "modality": modality, "src_content": _src(scene, **extra)}
        )
        return did, background

    def add_query(text: str | None, image: str | None, positives: list[str], negatives: list[str], src: str) -> None:
        qid = writer.qid(task.dataset_id)
        modality = ",".join(m for m, v in (("image", image), ("text", text)) if v)
        out.queries.append(
            {
                "qid": qid,
                "query_txt": text,
                "query_img_path": image,
                "query_modality": modality,
                "query_src_content": src,
                "pos_cand_list": positives,
                "neg_cand_list": negatives if split == "train" else [],
                "task_id": task.task_id,
            }
        )
        out.qrels.extend(f"{qid} 0 {did} 1 {task.task_id}" for did in positives)

    def query_image(scene: Scene, qnum: int) -> tuple[str, str]:
        return writer.image(scene, rng, f"{folder}/q{qnum}")

    # Query scenes first, so that no distractor repeats a positive scene.
    used: set[Scene] = set()
    plans: list[tuple[Scene, Scene | None, str | None]] = []  # (target scene, reference scene, edit text)
    while len(plans) < num_queries:
        scene = random_scene(rng)
        reference, edit_text = None, None
        if task.name == "cirr_task7":
            reference = scene
            scene, edit_text = edit(reference, rng)
            if reference in exclude or reference in used:
                continue
        if scene in exclude or scene in used:
            continue
        used.add(scene)
        if reference is not None:
            used.add(reference)
        plans.append((scene, reference, edit_text))
    positive_scenes = {plan[0] for plan in plans}
    taken = positive_scenes | exclude  # scenes no distractor may repeat (no duplicate or unlabelled positive)
    neighbours = 2 if split == "test" else 1

    if task.name == "oven_task6":
        for obj in (Obj(cell, colour, shape) for cell in CELLS for colour in COLOURS for shape in SHAPES):
            did_of_statement[obj] = writer.did(task.dataset_id)
            out.candidates.append(
                {
                    "did": did_of_statement[obj],
                    "txt": statement(obj),
                    "img_path": None,
                    "modality": "text",
                    "src_content": _src((obj,)),
                }
            )

    for number, (scene, reference, edit_text) in enumerate(plans):
        several = number % 4 == 3
        if task.name == "oven_task6":
            image, _ = query_image(scene, number)
            if several and len(scene) > 1:
                targets, text = list(scene), "name any shape in this picture"
            else:
                target = scene[int(rng.integers(len(scene)))]
                targets, text = [target], f"what is in the {CELL_PARAPHRASES[target.cell]}?"
            positives = [did_of_statement[obj] for obj in targets]
            add_query(text, image, positives, [], _src(scene))
            continue

        negatives = []
        if task.name == "cirr_task7":
            assert reference is not None and edit_text is not None
            image, _ = query_image(reference, number)
            positives = [add_candidate(scene, "image")[0] for _ in range(2 if several else 1)]
            negatives.append(add_candidate(reference, "image", role="reference")[0])
            for other in _variants(reference, rng, neighbours, taken):
                taken.add(other)
                negatives.append(add_candidate(other, "image", role="other edit")[0])
            add_query(edit_text, image, positives, negatives, _src(reference, edit=edit_text))
        else:
            if task.name in {"mscoco_task0", "webqa_task2", "nights_task4"}:
                kind = "pair" if task.name == "webqa_task2" else "image"
                query_bg = None
                if task.name == "nights_task4":
                    image, query_bg = query_image(scene, number)
                    text = None
                else:
                    image, text = None, paraphrase(scene)
                positives = [add_candidate(scene, kind, avoid=query_bg)[0] for _ in range(2 if several else 1)]
                distractor_kinds = [kind]
            else:  # text candidates: webqa_task1 (text query), mscoco_task3 (image query)
                if task.name == "mscoco_task3":
                    image, text = query_image(scene, number)[0], None
                else:
                    image, text = None, paraphrase(scene)
                positives = [add_candidate(scene, "caption")[0]]
                if several:
                    positives.append(add_candidate(scene, "listing")[0])
                distractor_kinds = ["caption", "listing"]
            for variant in _variants(scene, rng, neighbours, taken):
                taken.add(variant)
                negatives.append(add_candidate(variant, str(rng.choice(distractor_kinds)), role="near miss")[0])
            add_query(text, image, positives, negatives, _src(scene))

    # Fill the test pool up to pool_size with random scenes that are nobody's positive.
    if split == "test" and task.name != "oven_task6":
        fill_kinds = {
            "mscoco_task0": ["image"],
            "webqa_task2": ["pair"],
            "nights_task4": ["image"],
            "cirr_task7": ["image"],
        }.get(task.name, ["caption", "listing"])
        while len(out.candidates) < pool_size:
            scene = random_scene(rng)
            if scene not in taken:
                taken.add(scene)
                add_candidate(scene, str(rng.choice(fill_kinds)), role="random")
    return out, used


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_synthetic_mbeir(
    output_dir: str | Path,
    *,
    seed: int = 0,
    test_queries: int = 60,
    train_queries: int = 240,
    pool_size: int = 200,
    image_size: int = 64,
    overwrite: bool = False,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Write the synthetic benchmark (see the module docstring) under ``output_dir``.

    Args:
        output_dir: Target folder; must be empty or absent (or hold an earlier synthetic benchmark and
            ``overwrite=True``).
        seed: Seed of every random draw; the output is deterministic given all arguments.
        test_queries: Test queries per task.
        train_queries: Train queries per task.
        pool_size: Local (test) pools are filled with random scenes up to this many candidates (the positives and
            near misses of the queries may already make more); ``oven_task6`` always has its 180 statements.
        image_size: Side of the square images in pixels.
        overwrite: Replace an earlier synthetic benchmark in ``output_dir``.
        show_progress_bar: Show a progress bar over the task splits written.

    Returns:
        The summary also written to ``output_dir/synthetic.json`` (arguments and counts).

    Raises:
        ValueError: For sizes out of range, or a non-empty ``output_dir`` that is not a synthetic benchmark
            (or is one, without ``overwrite``).
    """
    for name, value, low, high in (
        ("test_queries", test_queries, 1, MAX_COUNT),
        ("train_queries", train_queries, 1, MAX_COUNT),
        ("pool_size", pool_size, 1, MAX_COUNT),
        ("image_size", image_size, 32, MAX_IMAGE_SIZE),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(
                f"{name} must be an integer from {low} to {high:,} (shapes need 32 pixels; the bounds keep the "
                f"benchmark's disk and memory small), got {value!r}."
            )
    root = Path(output_dir)
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER_FILE).is_file():
            raise ValueError(f"{root} is not empty and is not a synthetic benchmark. Choose an empty folder.")
        if not overwrite:
            raise ValueError(
                f"{root} already holds a synthetic benchmark. Pass overwrite=True (--overwrite) to redo it."
            )
        for name in ("query", "cand_pool", "qrels", "instructions", "mbeir_images", MARKER_FILE):
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)

    writer = _Writer(root, image_size)
    tasks = [MBEIRTask.from_name(name) for name in TASKS]
    union: dict[str, list[dict[str, Any]]] = {"test": [], "train": []}
    counts: dict[str, dict[str, int]] = {}
    with tqdm(
        total=2 * len(tasks), desc="Writing the synthetic benchmark", unit="split", disable=not show_progress_bar
    ) as bar:
        for task_index, task in enumerate(tasks):
            test_scenes: set[Scene] = set()
            for split, num_queries in (("test", test_queries), ("train", train_queries)):
                rng = np.random.default_rng([seed, task_index, SPLIT_SEEDS[split]])
                out, used = _build_task(task, split, writer, rng, num_queries, pool_size, test_scenes)
                if split == "test":
                    test_scenes = used
                    # Like the real data, MSCOCO's local pools are per split.
                    pool_name = f"{task.name}_test" if task.dataset == "mscoco" else task.name
                    _write_jsonl(root / "cand_pool" / "local" / f"mbeir_{pool_name}_cand_pool.jsonl", out.candidates)
                _write_jsonl(root / "query" / split / f"mbeir_{task.name}_{split}.jsonl", out.queries)
                _write_lines(root / "qrels" / split / f"mbeir_{task.name}_{split}_qrels.txt", out.qrels)
                union[split].extend(out.candidates)
                counts.setdefault(task.name, {})[f"{split}_queries"] = len(out.queries)
                counts[task.name][f"{split}_candidates"] = len(out.candidates)
                bar.update()
    for split, records in union.items():
        _write_jsonl(root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl", records)

    rows = ["query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4"]
    for task in tasks:
        display = DATASET_DISPLAY[task.dataset]
        phrasings = "\t".join(INSTRUCTIONS[task.name])
        rows.append(f"{task.query_modality}\t{task.candidate_modality}\t{display}\t{task.dataset_id}\t{phrasings}")
    _write_lines(root / "instructions" / "query_instructions.tsv", rows)

    summary = {
        "generator": __name__,
        "format_version": FORMAT_VERSION,
        "arguments": {
            "seed": seed,
            "test_queries": test_queries,
            "train_queries": train_queries,
            "pool_size": pool_size,
            "image_size": image_size,
        },
        "note": "Synthetic data in M-BEIR's layout; task names and dataset ids are borrowed, scores are not "
        "comparable with published M-BEIR numbers.",
        "tasks": counts,
        "union_candidates": {split: len(records) for split, records in union.items()},
        "images": writer.images,
    }
    (root / MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote the synthetic M-BEIR benchmark to %s (%d images).", root, writer.images)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel make-synthetic``."""
    parser.add_argument("output_dir", nargs="?", help="folder to write (empty or absent)")
    parser.add_argument("--zeroshot", metavar="DIR", help="also write the zero-shot suite's synthetic copies to DIR")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--test-queries", type=int, default=60, help="test queries per task (default: 60)")
    parser.add_argument("--train-queries", type=int, default=240, help="train queries per task (default: 240)")
    parser.add_argument("--pool-size", type=int, default=200, help="candidates per local test pool (default: 200)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic benchmark there")


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel make-synthetic``."""
    if args.zeroshot:
        from .zeroshot.synthetic import make_synthetic_zeroshot

        make_synthetic_zeroshot(args.zeroshot, seed=args.seed)
        print(f"Synthetic zero-shot datasets written to {args.zeroshot}")
    if args.output_dir is None:
        if args.zeroshot:
            return 0
        raise ValueError("Give the output folder of the synthetic M-BEIR benchmark, or --zeroshot DIR.")
    summary = make_synthetic_mbeir(
        args.output_dir,
        seed=args.seed,
        test_queries=args.test_queries,
        train_queries=args.train_queries,
        pool_size=args.pool_size,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(f"Synthetic M-BEIR benchmark written to {args.output_dir}")
    for name, numbers in summary["tasks"].items():
        print(
            f"  {name:<14} test: {numbers['test_queries']:>4} queries, {numbers['test_candidates']:>4} candidates"
            f" | train: {numbers['train_queries']:>4} queries"
        )
    print(f"  union pools: {summary['union_candidates']}; {summary['images']} images")
    return 0
