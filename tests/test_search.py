"""Sharded exact search equals one flat faiss index; the embedding store resumes after an interruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from umarvel_st.evaluation.embeddings import EmbeddingStore, encode_to_store
from umarvel_st.evaluation.search import exact_search, search_shards


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """Tiny faiss calls on a busy 2-core machine spend most of their time waking OpenMP threads."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def _flat(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(queries, k)


@pytest.mark.parametrize("num_queries", [3, 40])  # faiss's per-query and BLAS code paths
@pytest.mark.parametrize("k", [1, 5, 10, 50])
def test_sharded_equals_flat_with_many_exact_ties(num_queries: int, k: int) -> None:
    rng = np.random.default_rng(k * 100 + num_queries)
    # Small integer vectors: scores are exact and tie massively, so the tie order is fully exercised.
    database = rng.integers(-1, 2, size=(700, 3)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(num_queries, 3)).astype(np.float32)
    flat_scores, flat_ids = _flat(queries, database, k)
    for shard_size in (3, 64, 700):
        scores, ids = exact_search(queries, database, k, shard_size=shard_size)
        np.testing.assert_array_equal(ids, flat_ids)
        np.testing.assert_array_equal(scores, flat_scores)


def test_sharded_equals_flat_on_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((3000, 32)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = database[rng.choice(3000, 50)] + 0.1 * rng.standard_normal((50, 32)).astype(np.float32)
    flat_scores, flat_ids = _flat(queries, database, 10)
    scores, ids = exact_search(queries, database, 10, shard_size=256)
    np.testing.assert_array_equal(ids, flat_ids)
    np.testing.assert_allclose(scores, flat_scores, rtol=0, atol=1e-6)


def test_query_sets_with_their_own_k_share_one_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    database = rng.integers(-2, 3, size=(500, 4)).astype(np.float32)
    first, second = (rng.integers(-2, 3, size=(n, 4)).astype(np.float32) for n in (6, 30))
    store = EmbeddingStore(tmp_path / "pool", {"test": 1}, shard_size=64)
    for start in range(0, 500, 64):
        store.append(database[start : start + 64])
    store.mark_complete()
    (_, ids_10), (_, ids_50) = search_shards(store.iter_shards(), [(first, 10), (second, 50)], show_progress_bar=False)
    np.testing.assert_array_equal(ids_10, _flat(first, database, 10)[1])
    np.testing.assert_array_equal(ids_50, _flat(second, database, 50)[1])


def test_k_larger_than_the_database_returns_everything() -> None:
    database = np.eye(3, dtype=np.float32)
    scores, ids = exact_search(np.array([[0.0, 1.0, 0.5]], dtype=np.float32), database, 5, shard_size=2)
    assert ids.tolist() == [[1, 2, 0]]
    assert scores.tolist() == [[1.0, 0.5, 0.0]]


def test_search_errors() -> None:
    database = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="k must be"):
        exact_search(database, database, 0)
    with pytest.raises(ValueError, match="dimension"):
        exact_search(np.ones((1, 2), dtype=np.float32), database, 1)
    with pytest.raises(ValueError, match="empty"):
        search_shards(iter([]), [(database, 1)], show_progress_bar=False)


class CountingEncoder:
    """Deterministic unit vectors from item text; fails on call number ``fail_on`` (1-based) if given."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.encoded: list[str] = []
        self.fail_on = fail_on

    def __call__(self, items: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt("simulated interruption")
        self.encoded.extend(items)
        vectors = np.array([[len(item), sum(map(ord, item)) % 97, 1.0] for item in items], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _items(n: int):
    return lambda start: iter(f"item {i}" for i in range(start, n))


def test_encoding_resumes_after_an_interruption(tmp_path: Path) -> None:
    fingerprint = {"source": "items", "count": 10}
    interrupted = CountingEncoder(fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(EmbeddingStore(tmp_path, fingerprint, 4), _items(10), 10, interrupted, show_progress_bar=False)
    assert EmbeddingStore(tmp_path, fingerprint, 4).num_rows == 8  # two complete shards survive

    resumed = CountingEncoder()
    store = EmbeddingStore(tmp_path, fingerprint, 4)
    encode_to_store(store, _items(10), 10, resumed, show_progress_bar=False)
    assert resumed.encoded == ["item 8", "item 9"]  # only what was missing
    assert store.complete

    fresh = EmbeddingStore(tmp_path / "fresh", fingerprint, 4)
    encode_to_store(fresh, _items(10), 10, CountingEncoder(), show_progress_bar=False)
    np.testing.assert_array_equal(store.load(), fresh.load())
    assert [offset for offset, _ in store.iter_shards()] == [0, 4, 8]

    again = CountingEncoder()
    encode_to_store(EmbeddingStore(tmp_path, fingerprint, 4), _items(10), 10, again, show_progress_bar=False)
    assert again.calls == 0  # complete: nothing to do

    changed = CountingEncoder()
    encode_to_store(
        EmbeddingStore(tmp_path, {**fingerprint, "count": 9}, 4), _items(9), 9, changed, show_progress_bar=False
    )
    assert len(changed.encoded) == 9  # other data: encoded from scratch


def test_encoder_output_is_checked(tmp_path: Path) -> None:
    def wrong_shape(items: list[str]) -> np.ndarray:
        return np.ones((len(items) + 1, 3), dtype=np.float32)

    def not_finite(items: list[str]) -> np.ndarray:
        return np.full((len(items), 3), np.nan, dtype=np.float32)

    with pytest.raises(ValueError, match="shape"):
        encode_to_store(EmbeddingStore(tmp_path / "a", {}, 4), _items(3), 3, wrong_shape, show_progress_bar=False)
    with pytest.raises(ValueError, match="NaN"):
        encode_to_store(EmbeddingStore(tmp_path / "b", {}, 4), _items(3), 3, not_finite, show_progress_bar=False)
    with pytest.raises(ValueError, match="Expected 5 items"):
        encode_to_store(
            EmbeddingStore(tmp_path / "c", {}, 4), _items(3), 5, CountingEncoder(), show_progress_bar=False
        )


def _complete_store(folder: Path, total: int = 10) -> tuple[EmbeddingStore, dict]:
    fingerprint = {"source": "items", "count": total}
    store = EmbeddingStore(folder, fingerprint, 4)
    encode_to_store(store, _items(total), total, CountingEncoder(), show_progress_bar=False)
    return store, fingerprint


def test_missing_or_damaged_shards_are_encoded_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = _complete_store(tmp_path / "fresh")[0].load()
    _, fingerprint = _complete_store(tmp_path / "store")
    shard = tmp_path / "store" / "shard-{:05d}.npy"
    damages = {
        "deleted middle shard": lambda: Path(str(shard).format(1)).unlink(),
        "truncated": lambda: Path(str(shard).format(1)).write_bytes(Path(str(shard).format(1)).read_bytes()[:-5]),
        "empty": lambda: Path(str(shard).format(0)).write_bytes(b""),
        "short": lambda: np.save(str(shard).format(1), expected[4:6]),
        "float64": lambda: np.save(str(shard).format(1), expected[4:8].astype(np.float64)),
        "other dimension": lambda: np.save(str(shard).format(1), expected[4:8, :2]),
        "stale extra shard": lambda: np.save(str(shard).format(3), expected[:4]),
    }
    for damage, apply in damages.items():
        apply()
        encoder = CountingEncoder()
        store = EmbeddingStore(tmp_path / "store", fingerprint, 4)
        encode_to_store(store, _items(10), 10, encoder, show_progress_bar=False)
        if damage == "empty":
            assert encoder.encoded == [f"item {i}" for i in range(4)], damage
        elif damage != "stale extra shard":
            assert encoder.encoded == [f"item {i}" for i in range(4, 8)], damage  # only the damaged shard
        np.testing.assert_array_equal(store.load(), expected, err_msg=damage)
        assert not Path(str(shard).format(3)).exists()
    assert "shard-00001.npy" in caplog.text and "encoded again" in caplog.text


def test_a_gap_or_nan_shard_is_never_read_silently(tmp_path: Path) -> None:
    store, fingerprint = _complete_store(tmp_path)
    (tmp_path / "shard-00001.npy").unlink()
    with pytest.raises(ValueError, match=r"shard-00001.npy is missing"):
        list(EmbeddingStore(tmp_path, fingerprint, 4).iter_shards())
    np.save(tmp_path / "shard-00001.npy", np.full((4, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shard-00001.npy holds NaN or infinite values.*Delete it"):
        list(EmbeddingStore(tmp_path, fingerprint, 4).iter_shards())


def test_ids_and_meta_are_checked(tmp_path: Path) -> None:
    store, fingerprint = _complete_store(tmp_path)
    ids = np.arange(10, dtype=np.int64) * 7
    store.save_ids(ids)
    np.testing.assert_array_equal(EmbeddingStore(tmp_path, fingerprint, 4).load_ids(), ids)
    np.save(tmp_path / "ids.npy", ids[::-1])  # permuted
    assert EmbeddingStore(tmp_path, fingerprint, 4).load_ids() is None
    (tmp_path / "ids.npy").write_bytes(b"\x93NUMPY")  # truncated
    assert EmbeddingStore(tmp_path, fingerprint, 4).load_ids() is None
    (tmp_path / "meta.json").write_text('{"fingerprint": ')  # truncated: start over
    encoder = CountingEncoder()
    encode_to_store(EmbeddingStore(tmp_path, fingerprint, 4), _items(10), 10, encoder, show_progress_bar=False)
    assert len(encoder.encoded) == 10


def test_a_changed_fingerprint_says_what_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, fingerprint = _complete_store(tmp_path)
    EmbeddingStore(tmp_path, {**fingerprint, "model": {"weights": "other"}}, 4)
    assert "different model" in caplog.text and str(tmp_path) in caplog.text
