"""The zero-shot task registry: one declarative entry per dataset (subset), spec section 3.

A task names its reader, the template of each side, the vision settings, the metric and the paper's U-MARVEL
(Qwen2-VL-7B) number for each reported key. Subsets (GeneCIS, Sugar-Crepe) are separate tasks sharing a ``group``;
a group's score is the plain mean of its subsets (the GeneCIS convention; the paper does not say, spec section 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ...data.zeroshot import readers
from ...modeling.inputs import MAX_PIXELS
from .items import Template

T2I = "Find me an everyday image that matches the given caption."
I2T = "Find an image caption describing the following everyday image."
CIRCO = "I'm looking for a similar everyday image with the described changes."
GENECIS_1 = (
    "I want you to retrieve an similar image with the described changes. Show me an image that best captures the "
    "following the described changes."
)
GENECIS_2 = (
    "I want you to retrieve an image with the same attributes as described. Show me an image that best captures the "
    "following the same attributes."
)
VISDIAL = "Find me an everyday image that matches the given dialog."
FASHIONIQ = "Find me a similar fashion image based on the following multi-round modifications."
SUGAR_CREPE = "Find an image caption describing the following image."
T2V = "Find an everyday video match with caption."
#: Urban1K's image budget: qwen-vl-utils' default maximum (spec section 1.5).
URBAN1K_MAX_PIXELS = 16384 * 28 * 28

METRICS = ("hit", "map", "gallery_hit", "accuracy")


@dataclass(frozen=True)
class ZeroShotTask:
    """One zero-shot dataset (subset).

    Attributes:
        name: Registry name (``--task``).
        dataset: Reader key in :data:`umarvel_st.data.zeroshot.readers.READERS`; also the data sub-folder.
        reader_args: Extra reader arguments (subset, split).
        query: Template of the query side.
        candidate: Template of the candidate side.
        metric: ``"hit"`` (hit-rate R@k), ``"map"`` (CIRCO mAP@k), ``"gallery_hit"`` (target in the top k of the
            query's own list) or ``"accuracy"`` (positive scores strictly above negative).
        ks: The k values computed; ``report_k`` the one shown beside the paper.
        both_directions: Also score candidates -> queries from the same embeddings (t->i and i->t).
        image_max_pixels: Image pixel budget of the factor-28 pre-resize.
        nframes: Fixed video frame count (MSVD), ``None`` for 2 fps sampling.
        group: Subset group averaged in the report (GeneCIS, Sugar-Crepe), or ``None``.
        causal_unpadded: The reference's causal attention on unpadded batches (legacy flag ``causal_unpadded``):
            video items are encoded one at a time, as there, and every batch without padding is causal.
        paper: Paper number per reported key (``"t2i"``, ``"i2t"``, ``"score"``, ``"r@1"``...), in %.
        notes: The task's protocol quirks, shown in the report.
    """

    name: str
    dataset: str
    query: Template
    candidate: Template
    metric: str = "hit"
    ks: tuple[int, ...] = (1, 5, 10)
    report_k: tuple[int, ...] = (1,)
    both_directions: bool = False
    image_max_pixels: int = MAX_PIXELS
    nframes: int | None = None
    group: str | None = None
    causal_unpadded: bool = False
    reader_args: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"Task {self.name}: metric {self.metric!r} is not one of {list(METRICS)}.")
        if self.dataset not in readers.READERS:
            raise ValueError(
                f"Task {self.name}: unknown dataset {self.dataset!r}; use one of {list(readers.READERS)}."
            )

    def read(self, data_root: Path) -> readers.ZeroShotData:
        """Read the dataset from ``data_root / dataset`` (or ``data_root`` itself if it is the dataset folder)."""
        folder = data_root / self.dataset if (data_root / self.dataset).is_dir() else data_root
        return partial(readers.READERS[self.dataset], folder, **self.reader_args)()


PLAIN = Template()
_TASKS: list[ZeroShotTask] = [
    ZeroShotTask(
        "sharegpt4v", "sharegpt4v", Template(T2I), PLAIN, both_directions=True, paper={"t2i": 96.4, "i2t": 97.2}
    ),
    ZeroShotTask(
        "urban1k",
        "urban1k",
        PLAIN,
        Template(I2T),
        both_directions=True,
        image_max_pixels=URBAN1K_MAX_PIXELS,
        paper={"t2i": 96.7, "i2t": 93.5},
        notes="i->t instruction on the image side for both directions; images up to 16384*28*28 px; the set-literal "
        "{'...'} wrapping of the reference is the legacy flag --legacy urban1k_set_literal",
    ),
    ZeroShotTask(
        "flickr30k",
        "flickr30k",
        Template(T2I, format=True, suffix=True),
        Template(suffix=True),
        both_directions=True,
        paper={"t2i": 85.4, "i2t": 93.3},
        notes="the only task with the 'Summarize above ...' suffix; 5 captions per image (i->t: any of 5)",
    ),
    ZeroShotTask(
        "circo",
        "circo",
        Template(CIRCO, join=" "),
        PLAIN,
        metric="map",
        ks=(5, 10, 25, 50),
        report_k=(5,),
        reader_args={"split": "val"},
        paper={"map@5": 36.2},
        notes="val split; the query's reference image stays in the pool",
    ),
    *(
        ZeroShotTask(
            f"genecis_{subset}",
            "genecis",
            Template(GENECIS_2 if subset == "focus_attribute" else GENECIS_1, join=" ", format=True),
            PLAIN,
            metric="gallery_hit",
            ks=(1, 2, 3),
            group="genecis",
            reader_args={"subset": subset},
            paper={},
            notes="per-query gallery (target + own gallery); ties count against the target",
        )
        for subset in readers.GENECIS_SUBSETS
    ),
    ZeroShotTask(
        "visdial",
        "visdial",
        Template(VISDIAL, join=" "),
        PLAIN,
        paper={"r@1": 70.3},
        notes="whole dialog, caption unused; instruction masked on the dialog side",
    ),
    ZeroShotTask(
        "fashioniq_multiturn",
        "fashioniq_multiturn",
        Template(FASHIONIQ),
        PLAIN,
        ks=(5, 8, 10),
        report_k=(5,),
        paper={"r@5": 65.7},
        notes="instruction first, then image/feedback per round, each round image its own vision block",
    ),
    ZeroShotTask(
        "ccneg",
        "ccneg",
        PLAIN,
        PLAIN,
        metric="accuracy",
        ks=(),
        report_k=(),
        paper={"accuracy": 84.5},
        notes="last 40,000 rows; commas removed from negatives; ties count as misses",
    ),
    *(
        ZeroShotTask(
            f"sugar_crepe_{subset}",
            "sugar_crepe",
            Template(SUGAR_CREPE) if subset.startswith(("add", "replace_att", "replace_obj")) else PLAIN,
            PLAIN,
            metric="accuracy",
            ks=(),
            report_k=(),
            group="sugar_crepe",
            reader_args={"subset": subset},
            notes="ties count as misses",
        )
        for subset in readers.SUGAR_CREPE_SUBSETS
    ),
    ZeroShotTask(
        "msrvtt", "msrvtt", Template(T2V), PLAIN, report_k=(1, 5, 10), paper={"r@1": 47.2, "r@5": 72.0, "r@10": 80.2}
    ),
    ZeroShotTask(
        "msvd",
        "msvd",
        Template(T2V),
        PLAIN,
        report_k=(1, 5, 10),
        nframes=12,
        paper={"r@1": 54.6, "r@5": 80.9, "r@10": 87.7},
        notes="12 frames per video; shorter clips repeat frames (the reference raises)",
    ),
]
#: Paper numbers of subset groups (mean of the subsets' reported score), in %.
GROUP_PAPER = {"genecis": 19.1, "sugar_crepe": 87.9}

TASKS: dict[str, ZeroShotTask] = {}
for _task in _TASKS:
    if _task.name in TASKS:
        raise ValueError(f"Duplicate zero-shot task {_task.name!r}.")
    TASKS[_task.name] = _task

#: ``--suite paper``: every task of the paper's Tables 9-10.
SUITES = {"paper": list(TASKS)}
LEGACY_FLAGS = {
    "urban1k_set_literal": "Urban1K's image-side instruction written as a Python set {'...'}",
    "causal_unpadded": "causal attention on batches without padding; videos encoded one at a time (always causal, as "
    "in the reference); other batches are length-sorted by sentence-transformers, so which of them are unpadded "
    "differs from the reference's 8-device batches",
}


def get_task(name: str, legacy: tuple[str, ...] = ()) -> ZeroShotTask:
    """The registered task ``name`` (a group name such as ``genecis`` is not a task), with ``legacy`` flags applied.

    Raises:
        ValueError: For an unknown task or legacy flag, listing the known ones.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown zero-shot task {name!r}; use one of {list(TASKS)} or --suite paper.")
    unknown = set(legacy) - set(LEGACY_FLAGS)
    if unknown:
        raise ValueError(f"Unknown legacy flags {sorted(unknown)}; use some of {list(LEGACY_FLAGS)}.")
    task = TASKS[name]
    if name == "urban1k" and "urban1k_set_literal" in legacy:
        task = replace(task, candidate=replace(task.candidate, set_literal=True))
    if "causal_unpadded" in legacy:
        task = replace(task, causal_unpadded=True)
    return task
