"""Atomic writes: content, no temp files left, normal permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from longread.io import atomic_write_bytes, atomic_write_json


def test_atomic_write_gives_umask_permissions_not_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        import importlib

        import longread.io as lio

        importlib.reload(lio)  # the mode is read at import
        lio.atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
        importlib.reload(lio)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text(encoding="utf-8").strip().endswith("}")
    assert '"a": 2' in target.read_text(encoding="utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "k.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]


def _reload_io_with_umask(mask: int):
    import importlib

    import longread.io as lio

    old = os.umask(mask)
    importlib.reload(lio)  # the modes are read at import
    return lio, old


def test_atomic_dir_follows_the_umask_not_mkdtemp(tmp_path: Path) -> None:
    import importlib

    lio, old = _reload_io_with_umask(0o022)
    try:
        with lio.atomic_dir(tmp_path / "part") as tmp:
            (tmp / "sub").mkdir()
        tmp2 = lio.make_temp_dir(tmp_path, ".x.")
    finally:
        os.umask(old)
        importlib.reload(lio)
    assert stat.S_IMODE((tmp_path / "part").stat().st_mode) == 0o755
    assert stat.S_IMODE(tmp2.stat().st_mode) == 0o755


def test_remove_stale_temps_takes_only_what_writers_leave(tmp_path: Path) -> None:
    from longread.io import remove_stale_temps

    for name in [".idx.abcd1234.tmp", ".idx.old-4242", ".idx.v2.abcd1234.tmp", "idx", ".other.abcd1234.tmp"]:
        (tmp_path / name).mkdir()
    removed = remove_stale_temps(tmp_path, ["idx"])
    assert sorted(p.name for p in removed) == [".idx.abcd1234.tmp", ".idx.old-4242"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.v2.abcd1234.tmp", ".other.abcd1234.tmp", "idx"]


_HOLD = """
import sys, time
from longread.io import WriterLock
lock = WriterLock(sys.argv[1], "run dir X").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_writer_lock_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from longread.io import LockedError, WriterLock

    path = tmp_path / ".lock"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            WriterLock(path, "run dir X").acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with WriterLock(path, "run dir X") as lock:  # the kernel dropped the dead holder's lock
        assert lock.held


def test_a_reentrant_lock_is_shared_within_a_process_until_its_last_release(tmp_path: Path) -> None:
    from longread.io import LockedError, WriterLock

    path = tmp_path / ".lock"
    outer = WriterLock(path, "run dir X", reentrant=True).acquire()
    inner = WriterLock(path, "run dir X", reentrant=True).acquire()
    with pytest.raises(LockedError):
        WriterLock(path, "run dir X").acquire()  # a non-reentrant holder counts as another writer
    inner.release()
    with pytest.raises(LockedError):
        WriterLock(path, "run dir X").acquire()
    outer.release()
    with WriterLock(path, "run dir X"):
        pass
