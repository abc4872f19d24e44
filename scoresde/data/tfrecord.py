"""Random access to the reference's CelebA-HQ / FFHQ ``.tfrecords`` files, without TensorFlow.

The reference (Song et al., 2021) reads CelebA-HQ and FFHQ from TFRecord files of
``tf.train.Example`` protos with two features: ``shape`` (int64 ``[C, H, W]``) and ``data``
(the raw ``uint8`` pixels, CHW). This module reads that format directly:

- TFRecord framing: each record is ``uint64 length | uint32 crc | bytes[length] | uint32
  crc`` (little endian). One scan of the headers gives every record's offset; the CRCs are
  not checked.
- Protocol-buffer wire format for ``Example -> Features -> map<string, Feature>``, where a
  ``Feature`` is a ``BytesList`` (field 1), ``FloatList`` (2) or ``Int64List`` (3).
"""

from __future__ import annotations

import os
import struct as _struct
from typing import Any

import numpy as np

_HEADER = 12  # uint64 length + uint32 crc of the length
_FOOTER = 4  # uint32 crc of the data
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yields ``(field_number, wire_type, value)`` of one protobuf message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _WIRE_LEN:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _WIRE_I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _WIRE_I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"tfrecord: unsupported protobuf wire type {wire}.")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf: bytes) -> list:
    for kind, _, payload in _fields(buf):
        if kind == 1:  # BytesList
            return [bytes(v) for _, _, v in _fields(payload)]
        if kind == 2:  # FloatList, packed or not
            out: list = []
            for _, wire, v in _fields(payload):
                fmt = "<f" if wire == _WIRE_I32 else f"<{len(v) // 4}f"
                out.extend(_struct.unpack(fmt, v))
            return out
        if kind == 3:  # Int64List, packed or not
            out = []
            for _, wire, v in _fields(payload):
                if wire == _WIRE_VARINT:
                    out.append(_signed64(v))
                else:
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        out.append(_signed64(x))
            return out
    return []


def parse_example(buf: bytes) -> dict[str, list]:
    """Decodes a serialized ``tf.train.Example`` into ``{name: list of values}``.

    Example:
      >>> parse_example(b"")
      {}
    """
    features: dict[str, list] = {}
    for number, _, message in _fields(buf):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(message):
            if entry_number != 1:
                continue
            key, value = "", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = bytes(v).decode()
                elif n == 2:
                    value = v
            features[key] = _feature(value)
    return features


class TFRecordRecords:
    """The records of one ``.tfrecords`` file, by index: ``records[i] -> {"image": HWC uint8}``.

    Args:
      path: a TFRecord file of ``Example`` protos with ``shape`` ``[C, H, W]`` and ``data``
        features (the reference's CelebA-HQ / FFHQ format).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"TFRecordRecords: path={self.path!r} is not a file. Set data.tfrecords_path to "
                "the CelebA-HQ / FFHQ .tfrecords file (e.g. --config.data.tfrecords_path=...)."
            )
        self._offsets: list[tuple[int, int]] = []
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            pos = 0
            while pos < size:
                f.seek(pos)
                header = f.read(_HEADER)
                if len(header) < _HEADER:
                    raise ValueError(f"TFRecordRecords: truncated record header at byte {pos}.")
                (length,) = _struct.unpack("<Q", header[:8])
                self._offsets.append((pos + _HEADER, length))
                pos += _HEADER + length + _FOOTER
            if pos != size:
                raise ValueError(f"TFRecordRecords: {self.path!r} is truncated.")

    def __len__(self) -> int:
        return len(self._offsets)

    def raw(self, index: int) -> bytes:
        """The serialized record ``index``."""
        offset, length = self._offsets[index]
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def __getitem__(self, index: int) -> dict[str, Any]:
        features = parse_example(self.raw(index))
        if "shape" not in features or "data" not in features:
            raise ValueError(
                f"TFRecordRecords: record {index} of {self.path!r} lacks the 'shape'/'data' "
                f"features of the reference's format; it has {sorted(features)}."
            )
        c, h, w = features["shape"]
        data = np.frombuffer(features["data"][0], np.uint8).reshape(c, h, w)
        return {"image": np.ascontiguousarray(data.transpose(1, 2, 0))}
