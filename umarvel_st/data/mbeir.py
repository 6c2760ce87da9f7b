r"""Reading M-BEIR (UniIR's multimodal retrieval benchmark) from its on-disk layout, lazily.

The layout, relative to the data root (the real ``mbeir_data`` folder or one written by
:mod:`umarvel_st.data.synthetic`)::

    query/{split}/mbeir_<dataset>_task<id>_{split}.jsonl      queries of one task
    cand_pool/local/mbeir_<dataset>_task<id>_cand_pool.jsonl   a task's own (local) candidate pool (MSCOCO:
                                                               mbeir_mscoco_task<id>_{split}_cand_pool.jsonl)
    cand_pool/global/mbeir_union_{split}_cand_pool.jsonl       the union of all pools (global; 5.6M for test)
    qrels/{split}/mbeir_<dataset>_task<id>_{split}_qrels.txt   lines ``qid 0 did relevance task_id``
    instructions/query_instructions.tsv                        instruction phrasings per dataset and modalities
    mbeir_images/...                                           images, referenced by relative paths

Records stream from the jsonl files one line at a time and images are only referenced by path (the encoder
opens them when it embeds the item), so the 5.6M-candidate global pool never sits in memory. A malformed line
is reported with its file and line number; an image path that is absolute or climbs out of the data root is
refused.

Text files are read as UTF-8 (a leading byte-order mark is ignored) with lines ending in ``\n`` or ``\r\n``; a
line holding only spaces and tabs is blank and skipped. Everything else is an error naming ``file:line`` and the
fix: bytes that are not UTF-8, a carriage return inside a line (old Mac line endings), a line holding only other
whitespace such as a no-break space, a line over :data:`MAX_LINE_BYTES`, and text that is empty or whitespace
only where the record's modality needs text. A record is embedded as its modality says: a ``"text"`` record's
image path and an ``"image"`` record's text are ignored.

Evaluation instructions: UniIR draws one phrasing per query with ``random.choice`` from the list keyed by
(query dataset id, query modality, candidate modality). Here the draw is reproducible and independent of
file order, task selection or sharding: the phrasing for query ``qid`` is
``phrasings[random.Random(f"{seed}:{qid}").randrange(len(phrasings))]`` with ``seed`` =
:data:`DEFAULT_INSTRUCTION_SEED` (``42``) unless another is given. The candidate modality is the task's (UniIR
takes the modality of the query's first positive, which a task fixes).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION_SEED = 42

# Dataset name (as in file names) -> M-BEIR dataset id (the number before ":" in qids and dids).
DATASET_IDS: dict[str, int] = {
    "visualnews": 0,
    "fashion200k": 1,
    "webqa": 2,
    "edis": 3,
    "nights": 4,
    "oven": 5,
    "infoseek": 6,
    "fashioniq": 7,
    "cirr": 8,
    "mscoco": 9,
}

# Task id -> (query modality, candidate modality), spelled as in the data's ``modality`` fields.
TASK_MODALITIES: dict[int, tuple[str, str]] = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}

# The 16 M-BEIR evaluation tasks in the column order of the UniIR / LamRA / U-MARVEL tables.
MBEIR_TASKS: tuple[str, ...] = (
    "visualnews_task0",
    "mscoco_task0",
    "fashion200k_task0",
    "webqa_task1",
    "edis_task2",
    "webqa_task2",
    "visualnews_task3",
    "mscoco_task3",
    "fashion200k_task3",
    "nights_task4",
    "oven_task6",
    "infoseek_task6",
    "fashioniq_task7",
    "cirr_task7",
    "oven_task8",
    "infoseek_task8",
)

# Recall@k cut-off: 10 for the two fashion datasets (both directions of Fashion200K, and FashionIQ), else 5.
FASHION_DATASETS = frozenset({"fashion200k", "fashioniq"})

MODALITIES = ("text", "image", "image,text")
SPLITS = ("train", "val", "test")
POOLS = ("local", "global")

# UniIR's integer ids: dataset_id * bound + number (``hash_did`` / ``hash_qid`` in UniIR's preprocessing utils).
DID_BOUND = 10_000_000
QID_BOUND = 500_000

# A longer line is refused (bounded memory for a file without line breaks).
MAX_LINE_BYTES = 16 * 1024 * 1024

_TASK_NAME = re.compile(r"^([a-z0-9]+)_task(\d+)$")
_ID = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class MBEIRTask:
    """One M-BEIR task: a dataset and a (query modality -> candidate modality) pair.

    Attributes:
        name: ``<dataset>_task<id>``, e.g. ``"mscoco_task0"``.
        dataset: Dataset name as in file names, e.g. ``"mscoco"``.
        dataset_id: M-BEIR dataset id, e.g. ``9``.
        task_id: M-BEIR task id, e.g. ``0`` (text -> image).
    """

    name: str
    dataset: str
    dataset_id: int
    task_id: int

    @classmethod
    def from_name(cls, name: str) -> MBEIRTask:
        """Parse ``<dataset>_task<id>``.

        Raises:
            ValueError: If the dataset or the task id is not an M-BEIR one (the message lists the valid ones).
        """
        match = _TASK_NAME.match(name)
        if match is None or match.group(1) not in DATASET_IDS or int(match.group(2)) not in TASK_MODALITIES:
            raise ValueError(
                f"Unknown M-BEIR task name {name!r}. A task is named '<dataset>_task<id>' with dataset in "
                f"{sorted(DATASET_IDS)} and task id in {sorted(TASK_MODALITIES)}; the 16 benchmark tasks are "
                f"{', '.join(MBEIR_TASKS)}."
            )
        dataset = match.group(1)
        return cls(name=name, dataset=dataset, dataset_id=DATASET_IDS[dataset], task_id=int(match.group(2)))

    @property
    def query_modality(self) -> str:
        """``"text"``, ``"image"`` or ``"image,text"``."""
        return TASK_MODALITIES[self.task_id][0]

    @property
    def candidate_modality(self) -> str:
        """``"text"``, ``"image"`` or ``"image,text"``."""
        return TASK_MODALITIES[self.task_id][1]

    @property
    def k(self) -> int:
        """The M-BEIR Recall@k cut-off: 10 for Fashion200K and FashionIQ, 5 otherwise."""
        return 10 if self.dataset in FASHION_DATASETS else 5

    @property
    def search_depth(self) -> int:
        """How many candidates UniIR retrieves before scoring: the largest k of its metric list for the task
        (Recall@1/5/10, or Recall@10/20/50 for the fashion tasks). Recall@k reads the first k of that list, which
        only matters for exact score ties at the k-th place."""
        return 50 if self.dataset in FASHION_DATASETS else 10


@dataclass(frozen=True)
class MBEIRQuery:
    """One query record.

    Attributes:
        qid: ``"dataset_id:number"``.
        text: Query text, or ``None`` for an image-only query.
        image_path: Image path relative to the data root, or ``None``.
        modality: ``"text"``, ``"image"`` or ``"image,text"``.
        pos_cand_list: Positive candidate dids listed in the query file (evaluation reads the qrels instead).
        neg_cand_list: Negative candidate dids listed in the query file.
        task_id: The record's ``task_id`` field (``None`` when the file has none).
        src_content: The source record, as the JSON string the file holds (or ``None``).
        source: ``"file:line"`` of the record, for error messages.
    """

    qid: str
    text: str | None
    image_path: str | None
    modality: str
    pos_cand_list: tuple[str, ...]
    neg_cand_list: tuple[str, ...]
    task_id: int | None
    src_content: str | None
    source: str


@dataclass(frozen=True)
class MBEIRCandidate:
    """One candidate-pool record.

    Attributes:
        did: ``"dataset_id:number"``.
        text: Candidate text, or ``None`` for an image-only candidate.
        image_path: Image path relative to the data root, or ``None``.
        modality: ``"text"``, ``"image"`` or ``"image,text"``.
        src_content: The source record, as the JSON string the file holds (or ``None``).
        source: ``"file:line"`` of the record, for error messages.
    """

    did: str
    text: str | None
    image_path: str | None
    modality: str
    src_content: str | None
    source: str


def hash_id(record_id: str, bound: int, where: str = "") -> int:
    """UniIR's integer form of a ``"dataset_id:number"`` id: ``dataset_id * bound + number``.

    Args:
        record_id: E.g. ``"9:1234"``.
        bound: :data:`DID_BOUND` for candidates, :data:`QID_BOUND` for queries.
        where: ``"file:line"`` to name in the error.

    Raises:
        ValueError: If the id is not two non-negative integers joined by ``:`` or the number reaches ``bound``.
    """
    match = _ID.match(record_id) if isinstance(record_id, str) else None
    if match is None or int(match.group(2)) >= bound:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}bad M-BEIR id {record_id!r}; ids look like 'dataset_id:number' (e.g. '9:1234') with "
            f"number < {bound}."
        )
    return int(match.group(1)) * bound + int(match.group(2))


def unhash_id(value: int, bound: int) -> str:
    """Inverse of :func:`hash_id`."""
    return f"{value // bound}:{value % bound}"


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    r"""Stream ``(line_number, text)`` of the non-blank lines of a UTF-8 text file, line endings removed.

    Lines end with ``\n`` or ``\r\n``; a leading byte-order mark is dropped; lines of only spaces and tabs are
    skipped. Line numbers are those an editor shows.

    Raises:
        ValueError: For a missing file, and naming ``file:line``: bytes that are not UTF-8, a carriage return
            inside a line, a line of only other whitespace (e.g. a no-break space), a line over
            :data:`MAX_LINE_BYTES`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"M-BEIR file {path} does not exist. Check the data root and the task / split names.")
    with path.open("rb") as handle:
        for number in itertools.count(1):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(
                    f"{where}: line longer than {MAX_LINE_BYTES} bytes. M-BEIR files hold one record per line, "
                    "separated by \\n; check the file's line endings."
                )
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{where}: byte 0x{raw[error.start]:02x} at column {error.start + 1} is not UTF-8. M-BEIR files "
                    "are UTF-8: convert the file (e.g. iconv -f latin1 -t utf-8)."
                ) from None
            if "\r" in text:
                raise ValueError(
                    f"{where}: carriage return (\\r) inside the line. Lines must end with \\n or \\r\\n; convert "
                    "old Mac line endings (e.g. tr '\\r' '\\n')."
                )
            if not text.strip(" \t"):
                continue
            if not text.strip():
                raise ValueError(
                    f"{where}: the line holds only whitespace other than spaces and tabs "
                    f"({', '.join(sorted({f'U+{ord(c):04X}' for c in text}))}). Delete the line."
                )
            yield number, text


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line_number, record)`` from a jsonl file (lines as :func:`read_lines` reads them).

    Raises:
        ValueError: For a missing file, a line :func:`read_lines` refuses, or a line that is not a JSON object
            (naming file and line).
    """
    for number, line in read_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: malformed JSON line ({error.msg}). Fix or remove the line.") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
        yield number, record


def describe_file(path: str | Path) -> dict[str, Any]:
    """``{"sha256": content hash, "records": non-blank lines}`` of a text file: what cached embeddings of its
    records depend on (a copied file keeps its description, an edited one changes it).

    Raises:
        ValueError: As :func:`read_lines`.
    """
    digest = hashlib.sha256()
    records = 0
    for _, line in read_lines(path):
        digest.update(line.encode("utf-8") + b"\n")
        records += 1
    return {"sha256": digest.hexdigest(), "records": records}


def _field(record: dict[str, Any], key: str, where: str, types: tuple[type, ...], optional: bool = False) -> Any:
    if key not in record:
        if optional:
            return None
        raise ValueError(f"{where}: missing field {key!r}. M-BEIR records need it.")
    value = record[key]
    if value is None and optional:
        return None
    if not isinstance(value, types):
        raise ValueError(f"{where}: field {key!r} should be {' or '.join(t.__name__ for t in types)}, got {value!r}.")
    return value


def _check_modality(modality: str, text: str | None, image_path: str | None, where: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"{where}: unknown modality {modality!r}; expected one of {list(MODALITIES)}.")
    if "image" in modality and not image_path:
        raise ValueError(f"{where}: modality {modality!r} but no image path. Add the image path or fix the modality.")
    if "text" in modality and not (text and text.strip()):
        raise ValueError(
            f"{where}: modality {modality!r} but the text is {text!r} (empty or whitespace only). Give the text or "
            "fix the modality."
        )


def parse_query(record: dict[str, Any], where: str) -> MBEIRQuery:
    """Validate one query record (see :class:`MBEIRQuery`); errors name ``where``."""
    qid = _field(record, "qid", where, (str,))
    hash_id(qid, QID_BOUND, where)
    text = _field(record, "query_txt", where, (str,), optional=True)
    image_path = _field(record, "query_img_path", where, (str,), optional=True)
    modality = _field(record, "query_modality", where, (str,))
    _check_modality(modality, text, image_path, where)
    positives = _field(record, "pos_cand_list", where, (list,), optional=True) or []
    negatives = _field(record, "neg_cand_list", where, (list,), optional=True) or []
    task_id = _field(record, "task_id", where, (int,), optional=True)
    return MBEIRQuery(
        qid=qid,
        text=text,
        image_path=image_path,
        modality=modality,
        pos_cand_list=tuple(positives),
        neg_cand_list=tuple(negatives),
        task_id=task_id,
        src_content=_field(record, "query_src_content", where, (str,), optional=True),
        source=where,
    )


def parse_candidate(record: dict[str, Any], where: str) -> MBEIRCandidate:
    """Validate one candidate record (see :class:`MBEIRCandidate`); errors name ``where``."""
    did = _field(record, "did", where, (str,))
    hash_id(did, DID_BOUND, where)
    text = _field(record, "txt", where, (str,), optional=True)
    image_path = _field(record, "img_path", where, (str,), optional=True)
    modality = _field(record, "modality", where, (str,))
    _check_modality(modality, text, image_path, where)
    return MBEIRCandidate(
        did=did,
        text=text,
        image_path=image_path,
        modality=modality,
        src_content=_field(record, "src_content", where, (str,), optional=True),
        source=where,
    )


def resolve_under(root: str | Path, image_path: str, where: str = "") -> str:
    """The file ``root / image_path``, checked to lie under ``root`` and to exist.

    The check is on the path as written (``..`` and absolute paths are refused), so an image folder that is a
    symlink to another disk still works.

    Raises:
        ValueError: For an absolute or escaping path, or a missing file (the message starts with ``where``).
    """
    prefix = f"{where}: " if where else ""
    relative = os.path.normpath(image_path)
    if os.path.isabs(image_path) or relative == ".." or relative.startswith(".." + os.sep):
        raise ValueError(
            f"{prefix}image path {image_path!r} leaves the data root {root}. Image paths must be relative "
            "to the data root and stay inside it."
        )
    full = Path(root) / relative
    if not full.is_file():
        raise ValueError(f"{prefix}image file {full} does not exist. Restore it or fix the record's image path.")
    return str(full)


class MBEIRData:
    """An M-BEIR data root: paths, streaming readers, qrels, instructions and encoder items.

    Args:
        root: The folder holding ``query/``, ``cand_pool/``, ``qrels/``, ``instructions/`` and the images.

    Example:
        >>> data = MBEIRData("mbeir_data")  # doctest: +SKIP
        >>> task = data.resolve_tasks(["mscoco_task0"], split="test")[0]  # doctest: +SKIP
        >>> query = next(data.iter_queries(task, "test"))  # doctest: +SKIP
        >>> item = data.query_item(query, data.eval_instruction(query, task))  # doctest: +SKIP
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"M-BEIR data root {self.root} is not a folder. Pass the folder that holds query/.")

    # Paths -----------------------------------------------------------------------------------------------------

    def query_path(self, task: MBEIRTask, split: str) -> Path:
        """``query/{split}/mbeir_<task>_{split}.jsonl``."""
        return self.root / "query" / _check_split(split) / f"mbeir_{task.name}_{split}.jsonl"

    def qrels_path(self, task: MBEIRTask, split: str) -> Path:
        """``qrels/{split}/mbeir_<task>_{split}_qrels.txt``."""
        return self.root / "qrels" / _check_split(split) / f"mbeir_{task.name}_{split}_qrels.txt"

    def pool_path(self, task: MBEIRTask, pool: str, split: str) -> Path:
        """The candidate pool a task's queries search: its local pool, or the global union pool of ``split``.

        A local pool is ``cand_pool/local/mbeir_<task>_cand_pool.jsonl``, or ``mbeir_<task>_{split}_cand_pool.jsonl``
        where that exists (MSCOCO has separate val and test pools).
        """
        if pool == "local":
            folder = self.root / "cand_pool" / "local"
            per_split = folder / f"mbeir_{task.name}_{_check_split(split)}_cand_pool.jsonl"
            return per_split if per_split.is_file() else folder / f"mbeir_{task.name}_cand_pool.jsonl"
        if pool == "global":
            return self.root / "cand_pool" / "global" / f"mbeir_union_{_check_split(split)}_cand_pool.jsonl"
        raise ValueError(f"Unknown pool {pool!r}; use one of {list(POOLS)}.")

    @property
    def instructions_path(self) -> Path:
        """``instructions/query_instructions.tsv``."""
        return self.root / "instructions" / "query_instructions.tsv"

    # Tasks -----------------------------------------------------------------------------------------------------

    def tasks(self, split: str = "test") -> list[MBEIRTask]:
        """Tasks that have a query file for ``split``, in the paper's column order (others after, by name)."""
        folder = self.root / "query" / _check_split(split)
        suffix = f"_{split}.jsonl"
        names = []
        for path in folder.glob(f"mbeir_*{suffix}") if folder.is_dir() else ():
            name = path.name[len("mbeir_") : -len(suffix)]
            if _TASK_NAME.match(name):
                names.append(name)
        order = {name: index for index, name in enumerate(MBEIR_TASKS)}
        names.sort(key=lambda name: (order.get(name, len(order)), name))
        return [MBEIRTask.from_name(name) for name in names]

    def resolve_tasks(self, names: Sequence[str] | None, split: str = "test") -> list[MBEIRTask]:
        """The tasks to evaluate: ``names`` (validated), or every task present for ``split``.

        Raises:
            ValueError: For an unknown task name or one with no query file here (the message lists the
                tasks present), or when no task is present at all.
        """
        present = self.tasks(split)
        if not present:
            raise ValueError(
                f"No query files under {self.root / 'query' / split}. Expected mbeir_<dataset>_task<id>_{split}.jsonl "
                "files; check the data root and the split."
            )
        if names is None:
            return present
        if isinstance(names, str):
            raise TypeError(f"tasks must be a list of task names, got the string {names!r}; use [{names!r}].")
        if not names:
            raise ValueError(
                f"tasks is empty. Name at least one task (present: {', '.join(t.name for t in present)}) or pass "
                "None for all of them."
            )
        available = {task.name: task for task in present}
        tasks = []
        for name in names:
            task = MBEIRTask.from_name(name)
            if task.name not in available:
                raise ValueError(
                    f"Task {name!r} has no query file for split {split!r} under {self.root}. Tasks present: "
                    f"{', '.join(available)}."
                )
            if task not in tasks:
                tasks.append(task)
        return tasks

    # Records ---------------------------------------------------------------------------------------------------

    def iter_queries(self, task: MBEIRTask, split: str) -> Iterator[MBEIRQuery]:
        """Stream a task's queries (validated; errors name file and line)."""
        path = self.query_path(task, split)
        for number, record in iter_jsonl(path):
            yield parse_query(record, f"{path}:{number}")

    def iter_candidates(self, path: str | Path) -> Iterator[MBEIRCandidate]:
        """Stream a candidate pool file (validated; errors name file and line)."""
        for number, record in iter_jsonl(path):
            yield parse_candidate(record, f"{path}:{number}")

    def load_qrels(self, task: MBEIRTask, split: str) -> dict[str, list[str]]:
        """Positives per query from the qrels file, as UniIR reads them: lines with relevance > 0, in order.

        Raises:
            ValueError: For a missing file or a line that is not ``qid 0 did relevance task_id``.
        """
        path = self.qrels_path(task, split)
        if not path.is_file():
            raise ValueError(f"Qrels file {path} does not exist; every evaluated task needs one.")
        positives: dict[str, list[str]] = {}
        for number, line in read_lines(path):
            parts = re.split(r"[ \t]+", line.strip(" \t"))
            where = f"{path}:{number}"
            if len(parts) != 5 or not _is_int(parts[3]) or not _is_int(parts[4]):
                raise ValueError(
                    f"{where}: expected 'qid 0 did relevance task_id' (separated by spaces or tabs), got {line!r}."
                )
            qid, _, did, relevance, _ = parts
            hash_id(qid, QID_BOUND, where)
            hash_id(did, DID_BOUND, where)
            if int(relevance) > 0:
                positives.setdefault(qid, []).append(did)
        return positives

    # Instructions ----------------------------------------------------------------------------------------------

    @cached_property
    def instructions(self) -> dict[tuple[int, str, str], list[str]]:
        """Phrasings keyed by (dataset id, query modality, candidate modality), read from the tsv.

        Raises:
            ValueError: For a missing file or a row with fewer than five columns or a non-integer dataset id.
        """
        path = self.instructions_path
        if not path.is_file():
            raise ValueError(
                f"Instruction file {path} does not exist; M-BEIR queries are embedded with an instruction. Copy "
                "instructions/query_instructions.tsv from the M-BEIR release into the data root."
            )
        table: dict[tuple[int, str, str], list[str]] = {}
        lines = read_lines(path)
        next(lines, None)  # header
        for number, line in lines:
            parts = line.split("\t")
            phrasings = [part for part in parts[4:] if part.strip()]
            if len(parts) < 5 or not _is_int(parts[3]) or not phrasings:
                raise ValueError(
                    f"{path}:{number}: expected 'query_modality<TAB>cand_modality<TAB>dataset<TAB>dataset_id"
                    f"<TAB>phrasing...', got {line!r}."
                )
            table[(int(parts[3]), parts[0].strip(), parts[1].strip())] = phrasings
        return table

    def instructions_for(self, dataset_id: int, query_modality: str, candidate_modality: str) -> list[str]:
        """All phrasings for a (dataset id, query modality, candidate modality) key.

        Raises:
            ValueError: If the instruction file has no row for the key.
        """
        key = (dataset_id, query_modality, candidate_modality)
        if key not in self.instructions:
            raise ValueError(
                f"{self.instructions_path} has no instructions for dataset id {dataset_id}, query modality "
                f"{query_modality!r}, candidate modality {candidate_modality!r}. Add a row for it."
            )
        return self.instructions[key]

    def eval_instruction(self, query: MBEIRQuery, task: MBEIRTask, seed: int = DEFAULT_INSTRUCTION_SEED) -> str:
        """The evaluation instruction of a query (reproducible; see the module docstring for the rule)."""
        dataset_id = int(query.qid.split(":")[0])
        phrasings = self.instructions_for(dataset_id, query.modality, task.candidate_modality)
        return phrasings[random.Random(f"{seed}:{query.qid}").randrange(len(phrasings))]

    # Encoder items ---------------------------------------------------------------------------------------------

    def resolve_image(self, image_path: str, where: str = "") -> str:
        """The file of a record's image path under the data root (see :func:`resolve_under`)."""
        return resolve_under(self.root, image_path, where)

    def query_item(self, query: MBEIRQuery, instruction: str | None) -> dict[str, Any]:
        """The ``encode_query`` input of a query: ``{"text", "image", "instruction"}`` (the image as a path), with
        only what the query's modality names (the other one ``None``)."""
        image = self.resolve_image(query.image_path, query.source) if "image" in query.modality else None
        text = query.text if "text" in query.modality else None
        return {"text": text, "image": image, "instruction": instruction}

    def candidate_item(self, candidate: MBEIRCandidate) -> dict[str, Any]:
        """The ``encode_document`` input of a candidate, following its modality: ``{"text"}`` for a ``"text"``
        candidate (a dict, so a text that looks like an image file name stays text), else ``{"text", "image"}`` (the
        image as a path; the text ``None`` for an ``"image"`` one)."""
        if candidate.modality == "text":
            return {"text": candidate.text}
        text = candidate.text if "text" in candidate.modality else None
        return {"text": text, "image": self.resolve_image(candidate.image_path, candidate.source)}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {list(SPLITS)}.")
    return split


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
