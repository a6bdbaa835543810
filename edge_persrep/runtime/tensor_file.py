"""The safetensors file format, read and written with numpy alone.

Layout (https://huggingface.co/docs/safetensors, the format every ML platform reads):
    8 bytes           N, the header's length, unsigned 64-bit little-endian
    N bytes           the header: UTF-8 JSON, padded with spaces to a multiple of 8 bytes
                          {"<tensor name>": {"dtype": "F32" | "U8", "shape": [...],
                                             "data_offsets": [begin, end]},
                           ..., "__metadata__": {"<key>": "<string>", ...}}
    the data          every tensor's bytes, little-endian, row-major; offsets count from here

Why hand-written: the runtime's dependencies stay numpy + onnxruntime + Pillow (the `safetensors`
wheel is a compiled Rust extension), and these ~60 lines are the reference a port in another
language is written against (docs/bundle-format.md). The tests check it against the `safetensors`
library both ways.
"""

from __future__ import annotations

import json
import struct

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "U8": np.dtype("u1")}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit


def to_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialise float32 / uint8 arrays, in the given order, with string metadata."""
    header: dict = {"__metadata__": dict(metadata)}
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        code = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}.get(array.dtype)
        if code is None:
            raise ValueError(f"tensor '{name}' has dtype {array.dtype}; only float32 and uint8 are stored")
        data = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def from_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str], bytes]:
    """(tensors, metadata, the data section). Raises ValueError saying what is malformed."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError("header length points past the end of the file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("__metadata__ is not a map of strings")
    body = data[8 + n:]
    entries = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in [*shape, begin, end]):
                raise TypeError
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tensor '{name}' has a malformed entry") from exc
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"tensor '{name}': its shape does not match its byte span")
        entries[name] = dtype, shape, begin, end
    position = 0
    for _, _, begin, end in sorted(entries.values(), key=lambda e: (e[2], e[3])):
        if begin != position:
            raise ValueError("tensor data has gaps or overlaps")
        position = end
    if position != len(body):
        raise ValueError("tensor data does not fill the file exactly")
    tensors = {name: np.frombuffer(body, dtype, (end - begin) // dtype.itemsize, begin).reshape(shape)
               for name, (dtype, shape, begin, end) in entries.items()}
    return tensors, metadata, body
