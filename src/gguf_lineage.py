"""The lineage record (src/lineage.py) in a GGUF file, and a digest of the file's tensor data
that tells whether the weights changed after export.

The metadata of a GGUF file comes before its tensor data, so the digest is written last, in
place: the writer puts a placeholder of the digest's length under ``TENSOR_DIGEST_KEY``, and
``stamp_tensor_digest`` overwrites it once the tensors are written (llama.cpp's quantizer copies
every key of its input, so a k-quant made from a stamped file is stamped again).
``read_metadata`` reads the string keys of a file without loading its tensors or parsing its
vocabulary into Python objects.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from src.errors import PipelineError

TENSOR_DIGEST_KEY = "pipeline.tensor_data_sha256"
PLACEHOLDER = "0" * 64  # a sha256 in hex, before the tensors are written

# GGUF value types: struct formats of the fixed-size ones; 8 is a string, 9 an array
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _truncated(path: Path) -> PipelineError:
    return PipelineError(f"{path}: not a whole GGUF file (it ends inside its metadata)")


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise _truncated(self.path)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> tuple[int, bytes]:
        """(offset of the string's bytes, the bytes)."""
        n = self.take("<Q")
        start = self.pos
        self.pos += n
        if self.pos > len(self.data):
            raise _truncated(self.path)
        return start, bytes(self.data[start:self.pos])

    def skip_value(self, kind: int) -> None:
        if kind in _FIXED:
            self.pos += struct.calcsize(_FIXED[kind])
        elif kind == _STRING:
            length = self.take("<Q")  # read before pos moves past it
            self.pos += length
        elif kind == _ARRAY:
            inner, count = self.take("<I"), self.take("<Q")
            if inner in _FIXED:
                self.pos += count * struct.calcsize(_FIXED[inner])
            else:
                for _ in range(count):
                    self.skip_value(inner)
        else:
            raise PipelineError(f"{self.path}: unknown GGUF value type {kind}")


def _layout(path: Path) -> tuple[dict[str, tuple[int, bytes]], int]:
    """({string key: (offset of its value's bytes, the bytes)}, offset where the tensor data starts).
    The file is mapped, not read: only the metadata's pages are touched."""
    import mmap

    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise PipelineError(f"{path}: not a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data, path)


def _parse(data: bytes, path: Path) -> tuple[dict[str, tuple[int, bytes]], int]:
    r = _Reader(data, path)
    r.pos = 4
    version, tensors, keys = r.take("<I"), r.take("<Q"), r.take("<Q")
    if version < 2:
        raise PipelineError(f"{path}: GGUF version {version} is not read here")
    strings: dict[str, tuple[int, bytes]] = {}
    alignment = 32
    for _ in range(keys):
        key = r.string()[1].decode("utf-8")
        kind = r.take("<I")
        if kind == _STRING:
            strings[key] = r.string()
        elif key == "general.alignment" and kind == 4:
            alignment = r.take("<I")
        else:
            r.skip_value(kind)
    for _ in range(tensors):
        r.string()
        dims = r.take("<I")
        r.pos += 8 * dims + 4 + 8  # the shape, the type, the offset
    if r.pos > len(data):
        raise _truncated(path)
    return strings, -(-r.pos // alignment) * alignment


def read_metadata(path: Path) -> dict[str, str]:
    """The string values of a GGUF file's metadata, by key."""
    return metadata_and_digest(path, digest=False)[0]


def metadata_and_digest(path: Path, digest: bool = True) -> tuple[dict[str, str], str | None]:
    """(the string values of the file's metadata, the sha256 of its tensor data: every byte after
    its metadata), the metadata parsed once."""
    strings, start = _layout(Path(path))
    return {key: value.decode("utf-8") for key, (_, value) in strings.items()}, \
        _digest_from(Path(path), start) if digest else None


def tensor_digest(path: Path) -> str:
    """sha256 of the file's tensor data (every byte after its metadata)."""
    return metadata_and_digest(path)[1]


def _digest_from(path: Path, start: int) -> str:
    with path.open("rb") as f:
        f.seek(start)
        return hashlib.file_digest(f, "sha256").hexdigest()


def stamp_tensor_digest(path: Path) -> str:
    """Write the digest of the file's tensor data over the value of TENSOR_DIGEST_KEY (a
    placeholder, or a digest copied from the file it was made from); return it."""
    strings, start = _layout(Path(path))
    if TENSOR_DIGEST_KEY not in strings or len(strings[TENSOR_DIGEST_KEY][1]) != len(PLACEHOLDER):
        raise PipelineError(f"{path}: no {TENSOR_DIGEST_KEY} placeholder to write the digest over")
    digest = _digest_from(Path(path), start)
    with Path(path).open("r+b") as f:
        f.seek(strings[TENSOR_DIGEST_KEY][0])
        f.write(digest.encode("ascii"))
    return digest
