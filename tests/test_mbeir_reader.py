"""The M-BEIR reader: lazy records, errors that name file and line, image paths kept inside the root,
reproducible instructions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umarvel_st.data.mbeir import (
    DID_BOUND,
    MBEIR_TASKS,
    MBEIRData,
    MBEIRTask,
    hash_id,
    unhash_id,
)
from umarvel_st.data.synthetic import make_synthetic_mbeir


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reader")
    make_synthetic_mbeir(root, test_queries=6, train_queries=4, pool_size=30, image_size=32)
    return root


def _copy(bench: Path, tmp_path: Path) -> Path:
    """A writable copy of the benchmark."""
    import shutil

    shutil.copytree(bench, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy"


def test_tasks_and_their_properties() -> None:
    task = MBEIRTask.from_name("fashioniq_task7")
    assert (task.dataset_id, task.task_id, task.query_modality, task.candidate_modality) == (
        7,
        7,
        "image,text",
        "image",
    )
    assert (task.k, task.search_depth) == (10, 50)
    assert [MBEIRTask.from_name(name).k for name in ("fashion200k_task0", "fashion200k_task3", "mscoco_task0")] == [
        10,
        10,
        5,
    ]
    assert len(MBEIR_TASKS) == 16
    with pytest.raises(ValueError, match="visualnews_task0, mscoco_task0"):  # lists the known tasks
        MBEIRTask.from_name("mscoco_task5")
    with pytest.raises(ValueError, match="Unknown M-BEIR task"):
        MBEIRTask.from_name("imagenet_task0")


def test_resolve_tasks(bench: Path) -> None:
    data = MBEIRData(bench)
    assert [t.name for t in data.resolve_tasks(["cirr_task7", "webqa_task1", "cirr_task7"])] == [
        "cirr_task7",
        "webqa_task1",
    ]
    with pytest.raises(ValueError, match="Tasks present: mscoco_task0, webqa_task1"):
        data.resolve_tasks(["fashioniq_task7"])
    with pytest.raises(ValueError, match="Unknown split"):
        data.resolve_tasks(None, split="dev")
    with pytest.raises(ValueError, match="not a folder"):
        MBEIRData(bench / "nowhere")


def test_ids_hash_like_uniir() -> None:
    assert hash_id("9:1234", DID_BOUND) == 90_001_234
    assert unhash_id(90_001_234, DID_BOUND) == "9:1234"
    for bad in ("9-1234", "x:1", "9:", "9:10000000"):
        with pytest.raises(ValueError, match="dataset_id:number"):
            hash_id(bad, DID_BOUND, "f.jsonl:3")


def test_records_stream_and_errors_name_file_and_line(bench: Path, tmp_path: Path) -> None:
    root = _copy(bench, tmp_path)
    data = MBEIRData(root)
    task = MBEIRTask.from_name("webqa_task1")
    path = data.query_path(task, "test")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    records = data.iter_queries(task, "test")
    assert next(records).qid == json.loads(lines[0])["qid"]  # records before the bad line are served: lazy
    with pytest.raises(ValueError, match=rf"{path}:2: malformed JSON line"):
        next(records)

    record = json.loads(lines[0])
    for broken, message in (
        ({k: v for k, v in record.items() if k != "qid"}, "missing field 'qid'"),
        ({**record, "qid": "two:1"}, "bad M-BEIR id"),
        ({**record, "query_modality": "audio"}, "unknown modality 'audio'"),
        ({**record, "query_modality": "image,text"}, "but no image path"),
    ):
        path.write_text(json.dumps(broken) + "\n")
        with pytest.raises(ValueError, match=rf"{path}:1: .*{message}"):
            list(data.iter_queries(task, "test"))

    qrels = data.qrels_path(task, "test")
    qrels.write_text("2:1 0 2:5 1 1\n2:2 0 2:6\n")
    with pytest.raises(ValueError, match=rf"{qrels}:2: expected 'qid 0 did relevance task_id'"):
        data.load_qrels(task, "test")
    qrels.write_text("2:1 0 2:5 1 1\n2:1 0 2:7 0 1\n2:1 0 2:8 2 1\n")
    assert data.load_qrels(task, "test") == {"2:1": ["2:5", "2:8"]}  # relevance > 0 only


def test_image_paths_stay_inside_the_root(bench: Path, tmp_path: Path) -> None:
    data = MBEIRData(bench)
    query = next(data.iter_queries(MBEIRTask.from_name("nights_task4"), "test"))
    resolved = data.resolve_image(query.image_path)
    assert Path(resolved).is_file() and Path(resolved).is_relative_to(bench)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"")
    for escaping in ("../secret.png", "mbeir_images/../../secret.png", str(outside)):
        with pytest.raises(ValueError, match="leaves the data root"):
            data.resolve_image(escaping, "q.jsonl:7")
    with pytest.raises(ValueError, match=r"q.jsonl:7: image file .*missing.png does not exist"):
        data.resolve_image("mbeir_images/missing.png", "q.jsonl:7")


def test_encoder_items(bench: Path) -> None:
    data = MBEIRData(bench)
    task = MBEIRTask.from_name("cirr_task7")
    query = next(data.iter_queries(task, "test"))
    item = data.query_item(query, "Do it.")
    assert item == {"text": query.text, "image": data.resolve_image(query.image_path), "instruction": "Do it."}
    text_pool = data.iter_candidates(data.pool_path(MBEIRTask.from_name("webqa_task1"), "local", "test"))
    text_candidate = next(text_pool)
    # a dict, so a text that looks like an image file name ("IMG_1.jpg") is never read as a path
    assert data.candidate_item(text_candidate) == {"text": text_candidate.text}
    image_candidate = next(data.iter_candidates(data.pool_path(task, "local", "test")))
    assert data.candidate_item(image_candidate) == {
        "text": None,
        "image": data.resolve_image(image_candidate.image_path),
    }


def test_instruction_choice_is_reproducible(bench: Path) -> None:
    data = MBEIRData(bench)
    task = MBEIRTask.from_name("mscoco_task0")
    queries = list(data.iter_queries(task, "test"))
    phrasings = data.instructions_for(9, "text", "image")
    assert len(phrasings) == 4
    first = [data.eval_instruction(q, task) for q in queries]
    assert [data.eval_instruction(q, task) for q in reversed(queries)] == first[::-1]  # order does not matter
    assert set(first) <= set(phrasings)
    other_seeds = {tuple(data.eval_instruction(q, task, seed) for q in queries) for seed in range(5)}
    assert len(other_seeds) > 1  # the seed matters
    with pytest.raises(ValueError, match="no instructions for dataset id 9, query modality 'image'"):
        data.instructions_for(9, "image", "image")


def test_items_follow_the_record_modality(bench: Path, tmp_path: Path) -> None:
    root = _copy(bench, tmp_path)
    data = MBEIRData(root)
    image = next(data.iter_queries(MBEIRTask.from_name("nights_task4"), "test")).image_path
    pool = data.pool_path(MBEIRTask.from_name("webqa_task1"), "local", "test")
    lines = pool.read_text().splitlines()
    record = json.loads(lines[0])
    pool.write_text(json.dumps({**record, "img_path": image}) + "\n")  # a text record that names an image
    candidate = next(data.iter_candidates(pool))
    assert data.candidate_item(candidate) == {"text": record["txt"]}  # embedded as text only
    pool.write_text(json.dumps({**record, "modality": "image", "img_path": image}) + "\n")
    assert data.candidate_item(next(data.iter_candidates(pool))) == {"text": None, "image": str(root / image)}
    pool.write_text(json.dumps({**record, "modality": "image"}) + "\n")
    with pytest.raises(ValueError, match=rf"{pool}:1: modality 'image' but no image path"):
        next(data.iter_candidates(pool))

    task = MBEIRTask.from_name("webqa_task1")
    path = data.query_path(task, "test")
    query = json.loads(path.read_text().splitlines()[0])
    path.write_text(json.dumps({**query, "query_img_path": image}) + "\n")
    assert data.query_item(next(data.iter_queries(task, "test")), "Find it.")["image"] is None


def test_empty_task_list_is_refused(bench: Path) -> None:
    data = MBEIRData(bench)
    with pytest.raises(ValueError, match="tasks is empty.*present: mscoco_task0"):
        data.resolve_tasks([])
    with pytest.raises(TypeError, match=r"use \['cirr_task7'\]"):
        data.resolve_tasks("cirr_task7")


def test_malformed_text_files_name_file_line_and_fix(bench: Path, tmp_path: Path) -> None:
    root = _copy(bench, tmp_path)
    data = MBEIRData(root)
    task = MBEIRTask.from_name("webqa_task1")
    path = data.query_path(task, "test")
    first, second, *_ = path.read_bytes().splitlines()
    record = json.loads(first)
    for content, message in (
        (first + b"\n" + second.replace(b'"qid"', b'"q\xe9id"') + b"\n", r":2: byte 0xe9 at column \d+ is not UTF-8"),
        (first + b"\r" + second + b"\r", r":1: carriage return .* old Mac line endings"),
        (first + b"\n\xc2\xa0\n" + second + b"\n", r":2: the line holds only whitespace .*U\+00A0.*Delete the line"),
        (json.dumps({**record, "query_txt": " \t "}).encode() + b"\n", r":1: modality 'text' but the text is ' \\t '"),
    ):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{path}{message}"):
            list(data.iter_queries(task, "test"))
    # Windows line endings, a byte-order mark and blank lines of spaces and tabs are fine; line numbers as an editor's
    path.write_bytes(b"\xef\xbb\xbf" + first + b"\r\n \t\r\n" + second + b"\r\n")
    assert [query.source for query in data.iter_queries(task, "test")] == [f"{path}:1", f"{path}:3"]

    qrels = data.qrels_path(task, "test")
    qrels.write_bytes(b"2:1 0 2:5 1 1\r2:2 0 2:6 1 1\r")
    with pytest.raises(ValueError, match=rf"{qrels}:1: carriage return"):
        data.load_qrels(task, "test")

    instructions = data.instructions_path
    rows = instructions.read_bytes().splitlines()
    instructions.write_bytes(b"\n".join([rows[0], rows[1].replace(b"\t", b"\t\xff", 1), *rows[2:]]) + b"\n")
    with pytest.raises(ValueError, match=rf"{instructions}:2: byte 0xff"):
        data.instructions_for(9, "text", "image")
    instructions.unlink()
    with pytest.raises(ValueError, match="does not exist.*Copy instructions/query_instructions.tsv"):
        MBEIRData(root).instructions_for(9, "text", "image")


def test_a_line_is_bounded(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umarvel_st.data.mbeir as mbeir

    root = _copy(bench, tmp_path)
    task = MBEIRTask.from_name("webqa_task1")
    path = MBEIRData(root).query_path(task, "test")
    monkeypatch.setattr(mbeir, "MAX_LINE_BYTES", 64)
    path.write_text("x" * 200)  # e.g. a file without line breaks: never read whole
    with pytest.raises(ValueError, match=rf"{path}:1: line longer than 64 bytes"):
        list(MBEIRData(root).iter_queries(task, "test"))
