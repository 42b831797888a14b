"""The KV cache: on by default under the cache root, bounded, least recently used out first."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from longread import cache
from longread.pipelines.pipeline import Pipeline
from longread.types import Document, Question

ECHO = {"name": "kv", "stages": [{"key": "retriever.bm25"}, {"key": "reader.echo"}]}


def test_default_kv_dir_is_under_the_model_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LONGREAD_KV_DIR", raising=False)
    monkeypatch.setenv("LONGREAD_CACHE", str(tmp_path / "root"))
    assert Pipeline.from_config(ECHO).kv_dir == tmp_path / "root" / "kv"
    assert Pipeline.from_config(ECHO, cache_dir=tmp_path / "other").kv_dir == tmp_path / "other" / "kv"
    monkeypatch.setenv("LONGREAD_KV_DIR", str(tmp_path / "kv2"))
    assert Pipeline.from_config(ECHO).kv_dir == tmp_path / "kv2"
    assert Pipeline.from_config(ECHO, kv_cache=False).kv_dir is None
    assert Pipeline.from_config(ECHO, kv_max=0).kv_dir is None  # 0 bytes: memory only
    monkeypatch.setenv("LONGREAD_KV_MAX", "1.5GB")
    assert Pipeline.from_config(ECHO).kv_max == int(1.5 * 2**30)
    monkeypatch.setenv("LONGREAD_KV_MAX", "lots")
    with pytest.raises(ValueError, match="LONGREAD_KV_MAX.*'lots'"):
        Pipeline.from_config(ECHO)


def _doc_dir(root: Path, name: str, size: int, used: float) -> Path:
    d = root / "retrolm" / "model" / name
    d.mkdir(parents=True)
    (d / "meta.safetensors").write_bytes(b"m" * 10)
    (d / "page-00000.safetensors").write_bytes(b"p" * (size - 10))
    os.utime(d, (used, used))
    return d


def _file(root: Path, name: str, size: int, used: float) -> Path:
    p = root / "refrag" / "enc" / "k16" / name[:2] / f"{name}.safetensors"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"e" * size)
    os.utime(p, (used, used))
    return p


def test_eviction_removes_least_recently_used_whole_entries_until_it_fits(tmp_path: Path) -> None:
    now = time.time()
    root = tmp_path / "kv"
    old_doc = _doc_dir(root, "aaaa", 1000, now - 5000)
    new_doc = _doc_dir(root, "bbbb", 1000, now - 3000)
    old_file = _file(root, "ab12", 500, now - 4000)
    new_file = _file(root, "cd34", 500, now - 2000)
    live = _file(root, "ef56", 500, now - 10)  # within the grace period: a run may still read it
    stale_tmp = root / "retrolm" / "model" / ".cccc.x1y2z3w4.tmp"
    stale_tmp.mkdir()
    os.utime(stale_tmp, (now - 7200, now - 7200))
    assert [e.path for e in cache.entries(root)] == [old_doc, old_file, new_doc, new_file, live]
    removed = cache.evict(root, 2100, now=now)
    assert [e.path for e in removed] == [old_doc, old_file]  # 3500 → 2000 bytes
    assert not old_doc.exists() and new_doc.is_dir() and (new_doc / "page-00000.safetensors").is_file()
    assert not stale_tmp.exists() and not old_file.parent.exists()  # emptied folders go too
    assert [e.path for e in cache.evict(root, 0, now=now)] == [new_doc, new_file]
    assert live.is_file()


def test_a_touched_entry_is_kept_over_an_untouched_newer_one(tmp_path: Path) -> None:
    now = time.time()
    root = tmp_path / "kv"
    a = _file(root, "aa00", 100, now - 5000)
    b = _file(root, "bb00", 100, now - 4000)
    a.touch()  # what a reader does on a cache hit
    assert [e.path for e in cache.evict(root, 100, now=now + 1000)] == [b]
    assert a.is_file()


def test_cache_list_and_clear_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from longread.cli import main

    root = tmp_path / "kv"
    _doc_dir(root, "aaaa", 2048, time.time() - 100)
    _file(root, "ab12", 1024, time.time() - 100)
    assert main(["cache", "list", "--kv-dir", str(root), "--kv-max", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "retrolm/model" in out and "refrag/enc" in out and "bound 1.0 GB" in out and "total 3.0 KB in 2 entries" in out
    assert main(["cache", "clear", "--kv-dir", str(root), "--to", "2KB"]) == 0
    assert "removed 1 least recently used entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--kv-dir", str(root)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert cache.entries(root) == []


def _text(n: int) -> str:
    facts = " ".join(f"Fact {i}: the river number {i} is {i * 7} miles long." for i in range(n))
    return "The capital of Freedonia is Marxville. " + facts


def test_page_kv_is_kept_across_runs_by_default(tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pipelines (two runs) on one document: the second reads the first's page KV from disk."""
    monkeypatch.setenv("LONGREAD_KV_DIR", str(tmp_path / "kv"))
    cfg = {
        "name": "retrolm-kv",
        "chunker": {"kind": "whole"},
        "stages": [{"key": "reader.retrolm", "params": {"model": str(tiny_lm_dir), "page_size": 16, "budget_tokens": 64,
                                                         "local_pages": 2, "max_new_tokens": 3}}],
    }
    docs = [Document(id="d", text=_text(8))]
    q = Question(id="q", question="What is the capital of Freedonia?", doc_ids=["d"])
    first = Pipeline.from_config(cfg)
    first.index(docs, tmp_path / "idx", show_progress=False)
    (a,) = first.answer([q], index_dir=tmp_path / "idx")
    assert first.stages[0].stats["documents_prefilled"] == 1
    assert list((tmp_path / "kv" / "retrolm").rglob("meta.safetensors"))
    second = Pipeline.from_config(cfg)
    (b,) = second.answer([q], index_dir=tmp_path / "idx")
    assert second.stages[0].stats["pages_prefilled"] == 0 and second.stages[0].stats["disk_hits"] == 1
    assert b.answer == a.answer
    memory_only = Pipeline.from_config(cfg, kv_max=0)
    memory_only.answer([q], index_dir=tmp_path / "idx")
    assert memory_only.stages[0].stats["documents_prefilled"] == 1
