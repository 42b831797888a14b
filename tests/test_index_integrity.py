"""Index dirs: checksums in the manifest, damaged parts named in one error, one builder at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longread.data import write_jsonl
from longread.errors import IndexCorruptError
from longread.io import sha256_file
from longread.pipelines.indexdir import index_lock
from longread.pipelines.pipeline import Pipeline
from longread.types import Document, Question

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "name": "integrity-test",
    "chunker": {"kind": "tokens", "size": 24, "overlap": 4},
    "stages": [{"key": "retriever.bm25", "params": {"top_k": 2}}, {"key": "reader.echo", "params": {"words": 2}}],
}
DOCS = [
    Document(id="paris", text="Paris is the capital of France. The Eiffel Tower stands in Paris."),
    Document(id="nile", text="The Nile is the longest river in Africa, flowing north."),
]
QS = [Question(id="q1", question="What is the capital of France?", answers=["Paris"], gold_ids=["paris"])]


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """An index dir built from files by the CLI, so its manifest knows the rebuild command."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    write_jsonl(tmp_path / "q.jsonl", QS)
    idx = tmp_path / "idx"
    Pipeline.from_yaml(tmp_path / "c.yaml").index(DOCS, idx, show_progress=False, corpus_path=tmp_path / "corpus.jsonl")
    return tmp_path, idx


def _part(idx: Path) -> Path:
    (name,) = json.loads((idx / "manifest.json").read_text())["parts"]
    return idx / name


def _open(idx: Path, verify: str = "sizes"):
    return Pipeline.from_config(CONFIG, verify=verify).context(idx)


def test_manifest_records_every_file_size_and_sha256(built) -> None:
    _, idx = built
    man = json.loads((idx / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(idx).as_posix() for p in idx.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(man["files"]) == on_disk
    for rel, rec in man["files"].items():
        assert rec == {"size": (idx / rel).stat().st_size, "sha256": sha256_file(idx / rel)}
    assert man["built_with"]["corpus"].endswith("corpus.jsonl")


def test_zeroed_npy_is_caught_by_full_verification_naming_file_and_rebuild(built) -> None:
    tmp, idx = built
    npy = sorted(_part(idx).glob("*.npy"))[0]
    npy.write_bytes(b"\0" * npy.stat().st_size)  # same size: only a hash can tell
    _open(idx)  # sizes alone pass
    with pytest.raises(IndexCorruptError) as e:
        _open(idx, verify="full")
    msg = str(e.value)
    assert npy.name in msg and "sha256" in msg and "longread index" in msg and "--rebuild" in msg
    assert str(tmp / "corpus.jsonl") in msg and "\n" not in msg
    res = subprocess.run([sys.executable, "-m", "longread.cli", "index", "--verify", "--out", str(idx)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and npy.name in res.stderr


@pytest.mark.parametrize("damage", ["empty_json", "truncated_npy", "empty_npy", "missing_file", "truncated_chunks"])
def test_damaged_files_are_one_error_naming_the_file(built, damage: str) -> None:
    _, idx = built
    part = _part(idx)
    if damage == "empty_json":
        target = sorted(part.glob("*.json"))[0]
        target.write_text("")
    elif damage == "truncated_npy":
        target = sorted(part.glob("*.npy"))[0]
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "empty_npy":
        target = sorted(part.glob("*.npy"))[0]
        target.write_bytes(b"")
    elif damage == "missing_file":
        target = sorted(part.glob("*.json"))[0]
        target.unlink()
    else:
        target = idx / "corpus" / "docs" / "00000" / "text.bin"
        target.write_bytes(target.read_bytes()[:-40])
    with pytest.raises(IndexCorruptError, match=target.name) as e:
        _open(idx)
    assert "--rebuild" in str(e.value)


def test_cli_run_on_an_empty_npy_is_one_error_line(built) -> None:
    tmp, idx = built
    sorted(_part(idx).glob("*.npy"))[0].write_bytes(b"")
    res = subprocess.run(
        [sys.executable, "-m", "longread.cli", "run", "--config", str(tmp / "c.yaml"), "--questions", str(tmp / "q.jsonl"),
         "--index", str(idx), "--out", str(tmp / "run"), "--quiet"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: index") and ".npy" in lines[0] and "Traceback" not in res.stderr


def test_rebuild_repairs_a_damaged_index(built) -> None:
    _, idx = built
    (idx / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="manifest.json"):
        Pipeline.from_config(CONFIG).index(DOCS, idx, show_progress=False)
    Pipeline.from_config(CONFIG).index(DOCS, idx, show_progress=False, rebuild=True)
    _open(idx, verify="full")


def test_a_second_builder_is_refused_and_stale_temps_are_cleaned(tmp_path: Path) -> None:
    from longread.errors import LockedError

    idx = tmp_path / "idx"
    # What `kill -9` during a build leaves: temp dirs beside the index dir and inside it.
    (tmp_path / ".idx.k1ll3d00.tmp").mkdir()
    with index_lock(idx):  # another builder (the lock is per open file, so this process counts)
        with pytest.raises(LockedError, match=rf"pid {os.getpid()}"):
            Pipeline.from_config(CONFIG).index(DOCS, idx, show_progress=False)
    Pipeline.from_config(CONFIG).index(DOCS, idx, show_progress=False)
    assert not (tmp_path / ".idx.k1ll3d00.tmp").exists()
    (idx / ".bm25.d34db33f.tmp").mkdir()
    cfg = dict(CONFIG, stages=[{"key": "retriever.bm25", "params": {"top_k": 2, "k1": 1.2}}, CONFIG["stages"][1]])
    Pipeline.from_config(cfg).index(DOCS, idx, show_progress=False)  # builds one more part: holds the lock
    assert not (idx / ".bm25.d34db33f.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]
