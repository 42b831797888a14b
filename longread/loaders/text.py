"""Bytes to text: encoding detection, and refusing binary or mixed-encoding files.

The rule, in order: a byte-order mark decides (UTF-8/16/32); bytes that look binary (NUL or
many other control bytes) are refused; valid UTF-8 is UTF-8; bytes that are *partly* valid
UTF-8 multi-byte sequences and partly not are refused as mixed encodings (decoding them with
any single legacy code page would garble one of the two parts): that is when UTF-8 sequences
make up at least half the non-ASCII bytes; otherwise the document's own
declaration (HTML ``<meta charset>``) or charset-normalizer's best guess decodes them.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

__all__ = ["TextDecodeError", "decode_text", "normalize_newlines"]

# A multi-byte UTF-8 sequence that is well formed (no overlongs, no surrogates).
_UTF8_MULTI = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
# Control bytes that never occur in text files (tab, newlines, form feed and ESC do).
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts with UTF-16 LE's
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


class TextDecodeError(ValueError):
    """Bytes that are not text in one encoding; ``kind`` is ``binary`` or ``mixed_encoding``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _check_not_binary(data: bytes) -> None:
    sample = data[: 1 << 16]
    nul = sample.find(b"\x00")
    if nul >= 0:
        raise TextDecodeError(f"binary file, not text (NUL byte at offset {nul})", "binary")
    n_ctrl = sum(sample.count(bytes([b])) for b in _CONTROL)
    if sample and n_ctrl / len(sample) > 0.01:
        raise TextDecodeError(f"binary file, not text ({n_ctrl} control bytes in the first {len(sample)})", "binary")


def decode_text(data: bytes, *, declared: str | None = None) -> tuple[str, str]:
    """Decode a text file's bytes; return ``(text, encoding)``.

    ``declared`` is an encoding the file names itself (HTML meta charset); it is used only when
    the bytes are not UTF-8. Raises :class:`TextDecodeError` for binary data or a mix of UTF-8
    and another encoding (the message gives the byte offset and line of the first bad byte).
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError as e:
                raise TextDecodeError(
                    f"mixed encodings: starts with a {enc} byte-order mark but byte {e.start} "
                    f"(line {_line_of(data, e.start)}) is not {enc}; re-encode the file as UTF-8",
                    "mixed_encoding",
                ) from None
    _check_not_binary(data)
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        bad = e.start
    # Mostly UTF-8 with some bytes that are not: two encodings in one file. (A legacy CJK or
    # Cyrillic file also has accidental UTF-8-shaped pairs, but they are a minority of its bytes.)
    utf8 = [m.end() - m.start() for m in _UTF8_MULTI.finditer(data)]
    n_utf8, non_ascii = len(utf8), sum(1 for b in data if b > 127)
    if n_utf8 and sum(utf8) >= 0.5 * non_ascii:
        raise TextDecodeError(
            f"mixed encodings: {n_utf8} UTF-8 character(s) but byte {bad} (line {_line_of(data, bad)}) is not "
            "UTF-8; re-encode the file as UTF-8",
            "mixed_encoding",
        )
    if declared:
        try:
            codecs.lookup(declared)
            return data.decode(declared), declared.lower()
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong declaration is common; fall back to detection
    return _detect(data)


# Among code pages that fit equally well, the most common one: charset-normalizer breaks ties
# arbitrarily, and short Western text ("café crème") otherwise comes out as cp1006 or cp1250.
_PREFERRED = ("cp1252", "latin_1", "iso8859_15")


def _detect(data: bytes) -> tuple[str, str]:
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        raise TextDecodeError("binary file, not text (no text encoding fits its bytes)", "binary")
    best = min(matches, key=lambda m: (round(m.chaos, 2), -round(m.coherence, 2)))
    ties = {m.encoding: m for m in matches
            if round(m.chaos, 2) == round(best.chaos, 2) and round(m.coherence, 2) >= round(best.coherence, 2) - 0.05}
    for enc in _PREFERRED:
        if enc in ties:
            return str(ties[enc]), enc
    return str(best), best.encoding


# C0/C1 controls (but tab and newline), a stray BOM and non-characters: noise for every reader.
_NOISE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")


def normalize_newlines(text: str) -> str:
    """``\\r\\n``, ``\\r`` and form feeds to ``\\n``; NFC; other control characters removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    return _NOISE.sub("", unicodedata.normalize("NFC", text))
