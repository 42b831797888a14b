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
