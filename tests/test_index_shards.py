"""The sharded, memory-mapped corpus store and the sharded, resumable, streaming index build."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import yaml

from longread.config import ChunkerSpec
from longread.data import write_jsonl
from longread.pipelines.chunking import chunk_documents
from longread.pipelines.indexdir import check_index, file_table, read_manifest
from longread.pipelines.indexing import build_dir_for
from longread.pipelines.pipeline import Pipeline
from longread.pipelines.store import CorpusStore, ShardedStore, open_store
from longread.types import Chunk, Document, Question

ROOT = Path(__file__).resolve().parents[1]
WORDS = "river mountain capital ocean forest desert island valley city harbour bridge tower".split()


def iter_docs(n: int, words: int = 60):
    for i in range(n):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] + ("é" if j % 11 == 0 else "") for j in range(words))
        yield Document(id=f"doc-{i}", text=f"Topic {i} 𝄞. {text}", title=f"T{i}" if i % 3 == 0 else None,
                       meta={"n": i, "tags": ["a", "ü"]} if i % 4 == 0 else {})


def docs(n: int = 12) -> list[Document]:
    return list(iter_docs(n))


def config(*extra: dict) -> dict:
    return {
        "name": "shards-test",
        "chunker": {"kind": "tokens", "size": 16, "overlap": 4},
        "stages": [{"key": "retriever.bm25", "params": {"top_k": 3}}, *extra, {"key": "reader.echo", "params": {"words": 2}}],
    }


def files(idx: Path) -> dict:
    return read_manifest(idx)["files"]


def test_sharded_store_gives_back_what_was_saved(tmp_path: Path) -> None:
    ds = docs()
    mem = CorpusStore(ds, chunk_documents(ds, ChunkerSpec(kind="tokens", size=16, overlap=4)))
    mem.save(tmp_path / "corpus", shard_bytes=900)  # several shards
    s = open_store(tmp_path)  # an index dir: the store is in corpus/
    assert isinstance(s, ShardedStore) and s.n_shards > 2
    assert len(s) == len(mem) and list(s.chunks) == mem.chunks and s.chunks[-1] == mem.chunks[-1]
    assert [s.chunks[i] for i in range(len(mem))] == mem.chunks and s.chunks[2:5] == mem.chunks[2:5]
    assert list(s.documents) == list(mem.documents) and list(s.documents.values()) == list(mem.documents.values())
    assert s.documents["doc-4"] == mem.documents["doc-4"] and s.documents["doc-4"].meta == {"n": 4, "tags": ["a", "ü"]}
    assert {c.id: s.chunk_pos[c.id] for c in mem.chunks} == mem.chunk_pos
    assert dict(s.doc_chunks.items()) == mem.doc_chunks
    assert s.positions_for(["doc-7", "doc-0"]) == mem.positions_for(["doc-7", "doc-0"]) and s.positions_for(None) is None
    assert (s.chunk_doc_positions() == mem.chunk_doc_positions()).all()
    assert [t for sh in s.iter_chunk_shards() for t in sh.texts] == [c.text for c in mem.chunks]
    assert "nope" not in s.documents and "doc-1#999" not in s.chunk_pos and s.documents.get("nope") is None
    with pytest.raises(KeyError, match="'nope' is not in the index"):
        s.positions_for(["doc-1", "nope"])
    with pytest.raises(IndexError):
        s.chunks[len(mem)]
    # What the store cannot represent is refused, not saved wrong.
    bad = CorpusStore(ds[:1], [Chunk(id="x", doc_id="doc-0", text="not the text", start=0, end=12)])
    with pytest.raises(ValueError, match=r"not text\[0:12\] of document 'doc-0'"):
        bad.save(tmp_path / "bad")


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_opening_a_store_reads_only_the_pages_it_looks_up(tmp_path: Path) -> None:
    """Resident file pages are what this process has touched: opening a 32 MB store and looking
    up a few chunks and documents touches a few pages, reading every chunk touches them all."""
    body = "lorem ipsum dolor sit amet " * 2000  # 54 KB per document
    ds = [Document(id=f"d{i}", text=f"{body}{i}") for i in range(600)]
    CorpusStore(ds, [Chunk(id=f"{d.id}#0", doc_id=d.id, text=d.text, start=0, end=len(d.text)) for d in ds]).save(tmp_path)
    size = sum(p.stat().st_size for p in tmp_path.rglob("text.bin"))
    assert size > 30 << 20
    del ds
    gc.collect()
    before = _rss_file_kb()
    s = open_store(tmp_path)
    assert s.chunks[0].text.endswith("0") and s.chunks[-1].doc_id == "d599" and s.documents["d300"].text.endswith("300")
    assert s.positions_for(["d7"]) == [7] and s.chunk_pos["d9#0"] == 9 and "d3" in s.documents and len(s.documents) == 600
    looked_up = _rss_file_kb() - before
    assert looked_up < 4 << 10, f"lookups made {looked_up} KB of the store resident"
    assert sum(len(c.text) for c in s.chunks) > 30 << 20
    read_all = _rss_file_kb() - before
    assert read_all > (size >> 10) * 3 // 4, f"reading everything made only {read_all} KB resident (measure is blind)"


def test_index_streams_documents_and_shard_size_does_not_change_the_bm25_part(tmp_path: Path) -> None:
    refs: list[weakref.ref] = []
    alive = []

    def stream():
        for d in iter_docs(40):
            refs.append(weakref.ref(d))
            alive.append(sum(r() is not None for r in refs))
            yield d

    pipe = Pipeline.from_config(config())
    pipe.index(stream(), tmp_path / "small", show_progress=False, shard_size="1KB")
    assert max(alive) <= 8, f"the build held up to {max(alive)} of 40 documents at once"  # ~2 shards of 2
    pipe.index(docs(40), tmp_path / "one", show_progress=False)
    small, one = files(tmp_path / "small"), files(tmp_path / "one")
    assert read_manifest(tmp_path / "small")["store"]["shards"] > 10 and read_manifest(tmp_path / "one")["store"]["shards"] == 1
    part = {k: v for k, v in one.items() if not k.startswith("corpus/")}
    assert part and part == {k: v for k, v in small.items() if not k.startswith("corpus/")}  # byte for byte
    q = [Question(id="q", question="harbour islandé 𝄞", doc_ids=["doc-3", "doc-30"])]
    a = pipe.answer(q, index_dir=tmp_path / "small")[0]
    b = Pipeline.from_config(config()).answer(q, index_dir=tmp_path / "one")[0]
    assert a.passages and [(p.chunk, p.score) for p in a.passages] == [(p.chunk, p.score) for p in b.passages]
    check_index(tmp_path / "small", read_manifest(tmp_path / "small"), "full")


def test_the_sharded_bm25_part_is_the_one_a_single_streaming_build_writes(tmp_path: Path) -> None:
    from longread.retrievers.bm25 import BM25Retriever

    idx = tmp_path / "idx"
    Pipeline.from_config(config()).index(docs(40), idx, show_progress=False, shard_size="1KB")
    stage = BM25Retriever({"top_k": 3})
    assert read_manifest(idx)["store"]["shards"] > 10 and stage.part in read_manifest(idx)["parts"]
    (tmp_path / "single").mkdir()
    stage.build_part((c.text for c in open_store(idx).chunks), tmp_path / "single", show_progress=False)
    single = {p.name: p.read_bytes() for p in (tmp_path / "single").iterdir()}
    assert single == {p.name: p.read_bytes() for p in (idx / stage.part).iterdir()}


def test_impossible_ann_params_fail_before_any_part_is_built(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    dense = {"key": "retriever.dense", "params": {"encoder": str(tiny_encoder_dir), "index": "ivfpq", "nlist": 10_000, "nprobe": 8}}
    idx = tmp_path / "idx"
    with pytest.raises(ValueError, match=r"nlist must be <= the number of vectors \(\d+\), got nlist=10000"):
        Pipeline.from_config(config(dense)).index(docs(12), idx, show_progress=False)
    assert read_manifest(idx)["parts"] == {} and not [p for p in idx.iterdir() if p.name not in ("corpus", "manifest.json")]
    assert not (build_dir_for(idx) / "_map").exists()  # nothing was tokenised or encoded


def test_a_stopped_build_keeps_its_finished_shards(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def cut(n: int):
        yield from docs(40)[:n]
        raise Stop

    idx = tmp_path / "idx"
    pipe = Pipeline.from_config(config())
    with pytest.raises(Stop):
        pipe.index(cut(25), idx, show_progress=False, shard_size="1KB")
    build = build_dir_for(idx)
    kept = {p.parent.name: p.stat().st_ino for p in (build / "corpus" / "docs").glob("*/text.bin")}
    assert len(kept) >= 5 and not idx.exists()
    pipe.index(docs(40), idx, show_progress=False, shard_size="1KB")
    after = {p.parent.name: p.stat().st_ino for p in (idx / "corpus" / "docs").glob("*/text.bin")}
    assert all(after[k] == ino for k, ino in kept.items())  # not rewritten: moved into the index
    assert not build.exists()
    Pipeline.from_config(config()).index(docs(40), tmp_path / "clean", show_progress=False, shard_size="1KB")
    assert files(idx) == files(tmp_path / "clean")


def test_duplicate_ids_and_bad_shard_sizes_are_refused(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config())
    with pytest.raises(ValueError, match="duplicate document id 'doc-1'"):
        pipe.index([*docs(3), docs(3)[1]], tmp_path / "dup", show_progress=False)
    assert not (tmp_path / "dup").exists()
    with pytest.raises(ValueError, match="shard_size: a size must be"):
        pipe.index(docs(3), tmp_path / "x", show_progress=False, shard_size="lots")
    with pytest.raises(ValueError, match="executor must be one of"):
        pipe.index(docs(3), tmp_path / "x", show_progress=False, executor="spark")


def _to_format_2(idx: Path) -> None:
    """Rewrite a format-3 index as the JSONL store of format 2, as an older longread left it."""
    store = open_store(idx)
    write_jsonl(idx / "documents.jsonl", list(store.documents.values()))
    write_jsonl(idx / "chunks.jsonl", list(store.chunks))
    shutil.rmtree(idx / "corpus")
    man = read_manifest(idx)
    man["files"] = {k: v for k, v in man["files"].items() if not k.startswith("corpus/")}
    man["files"].update(file_table(idx))
    man["format"] = 2
    del man["store"]
    (idx / "manifest.json").write_text(json.dumps(man))


def test_a_format_2_index_still_answers_and_is_converted_in_place(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    pipe = Pipeline.from_config(config())
    pipe.index(docs(), idx, show_progress=False)
    q = [Question(id="q", question="forest harbour", answers=["x"])]
    want = [(p.chunk.id, p.score) for p in pipe.answer(q, index_dir=idx)[0].passages]
    _to_format_2(idx)
    (part,) = read_manifest(idx)["parts"]
    mtime = (idx / part).stat().st_mtime_ns
    assert [(p.chunk.id, p.score) for p in Pipeline.from_config(config()).answer(q, index_dir=idx)[0].passages] == want
    Pipeline.from_config(config()).index(docs(), idx, show_progress=False)  # same corpus: converts the store, keeps the part
    man = read_manifest(idx)
    assert man["format"] == 3 and not (idx / "chunks.jsonl").exists() and (idx / part).stat().st_mtime_ns == mtime
    check_index(idx, man, "full")
    assert [(p.chunk.id, p.score) for p in Pipeline.from_config(config()).answer(q, index_dir=idx)[0].passages] == want


def _cli_index(tmp: Path, cfg: dict, idx: Path, *extra: str) -> subprocess.Popen:
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "longread.cli", "index", "--config", str(tmp / "c.yaml"), "--corpus", str(tmp / "corpus.jsonl"),
         "--out", str(idx), "--shard-size", "1KB", "--quiet", *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def _kill_mid_part(tmp_path: Path, *extra: str) -> None:
    """Kill ``longread index`` while it maps a part's shards; the next build redoes only the rest."""
    write_jsonl(tmp_path / "corpus.jsonl", docs(40))
    idx = tmp_path / "idx"
    slow = config()
    slow["stages"][-1]["params"].update(index_part=True, index_sleep_s=0.4)
    proc = _cli_index(tmp_path, slow, idx, *extra)
    map_root = build_dir_for(idx) / "_map" / "echo-words"
    deadline = time.monotonic() + 120
    while len(list(map_root.glob("[0-9]*"))) < 3:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the build never reached the part's shards"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session
    proc.wait()
    # Ray's workers notice their driver's death a moment later and may finish a shard meanwhile.
    finished, stable_since = set(), time.monotonic()
    while time.monotonic() - stable_since < 1.5:
        now = {p.name for p in map_root.glob("[0-9]*")}
        if now != finished:
            finished, stable_since = now, time.monotonic()
        time.sleep(0.1)
    n_shards = read_manifest(idx)["store"]["shards"]
    assert 3 <= len(finished) < n_shards  # killed mid-way
    log = tmp_path / "redone.log"
    fast = json.loads(json.dumps(slow))
    fast["stages"][-1]["params"].update(index_sleep_s=0.0, index_log=str(log))
    Pipeline.from_config(fast).index(docs(40), idx, show_progress=False, shard_size="1KB")
    redone = set(log.read_text().split())
    assert redone == {f"{k:05d}" for k in range(n_shards)} - finished
    Pipeline.from_config(fast).index(docs(40), tmp_path / "clean", show_progress=False, shard_size="1KB")
    assert files(idx) == files(tmp_path / "clean")
    assert not build_dir_for(idx).exists()


@pytest.mark.slow
def test_a_killed_index_job_resumes_from_its_finished_shards(tmp_path: Path) -> None:
    _kill_mid_part(tmp_path)


@pytest.mark.slow
def test_a_killed_ray_index_job_resumes_from_its_finished_shards(tmp_path: Path) -> None:
    _kill_mid_part(tmp_path, "--executor", "ray")


@pytest.mark.slow
def test_ray_indexing_writes_the_same_index_as_local(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    cfg = {
        "name": "shards-ray",
        "chunker": {"kind": "tokens", "size": 16, "overlap": 4},
        "stages": [
            {"key": "retriever.hybrid", "params": {"bm25": {"top_k": 5}, "dense": {"encoder": str(tiny_encoder_dir), "top_k": 5}},
             "resources": {"num_cpus": 1, "concurrency": 2}},
            {"key": "reader.echo", "params": {"index_part": True}},
        ],
    }
    kw = {"show_progress": False, "shard_size": "2KB"}
    Pipeline.from_config(cfg, cache_dir=tmp_path / "cache").index(docs(30), tmp_path / "local", **kw)
    Pipeline.from_config(cfg, cache_dir=tmp_path / "cache").index(docs(30), tmp_path / "ray", executor="ray", **kw)
    local, ray_ = files(tmp_path / "local"), files(tmp_path / "ray")
    assert read_manifest(tmp_path / "ray")["store"]["shards"] > 3 and sorted(local) == sorted(ray_)
    floats = {k for k in local if k.endswith(("vectors.npy", "index.faiss"))}
    assert len(floats) == 2
    assert {k: v for k, v in local.items() if k not in floats} == {k: v for k, v in ray_.items() if k not in floats}
    vec = next(k for k in floats if k.endswith("vectors.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "ray" / vec), np.load(tmp_path / "local" / vec), atol=1e-5)
    qs = [Question(id="q1", question="capital mountain"), Question(id="q2", question="harbour", doc_ids=["doc-3"])]
    on_ray = Pipeline.from_config(cfg, cache_dir=tmp_path / "cache").answer(qs, index_dir=tmp_path / "ray", executor="ray")
    local_ = Pipeline.from_config(cfg, cache_dir=tmp_path / "cache").answer(qs, index_dir=tmp_path / "local")
    assert all(s.passages for s in on_ray)
    assert [[p.chunk.id for p in s.passages] for s in on_ray] == [[p.chunk.id for p in s.passages] for s in local_]
    # A worker's error reaches the caller as itself, not as Ray's wrapper.
    bad = json.loads(json.dumps(cfg))
    bad["stages"][0]["params"]["dense"]["encoder"] = str(tmp_path / "no-such-encoder")
    with pytest.raises(Exception, match="no-such-encoder' does not exist") as e:
        Pipeline.from_config(bad, cache_dir=tmp_path / "cache").index(docs(30), tmp_path / "bad", executor="ray", **kw)
    assert "ray" not in type(e.value).__module__
