"""Tensors of the Open Inference Protocol as numpy arrays: raw bytes (gRPC ``raw_*_contents``, the REST binary
tensor data extension) and JSON ``data`` lists.

Raw tensors are the flattened, row-major, little-endian elements; a BYTES element is its length (4 bytes,
little-endian) followed by its bytes. In JSON a BYTES element is a string: UTF-8 text, or base64 when the tensor's
parameters say ``"content_type": "base64"`` (how binary data such as an image travels without the extension).
Outputs are numeric.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.errors import BadRequest
from service.v2_models import DATATYPES

_LENGTH = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for an array's element type."""
    for name, kind in DATATYPES.items():
        if array.dtype == kind:
            return name
    raise TypeError(f"no protocol data type for {array.dtype}")


def checked_shape(name: str, datatype: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """A tensor's declared shape, checked: non-negative integers; the data type known."""
    if datatype not in DATATYPES:
        raise BadRequest(f"tensor {name!r}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})",
                         field=name)
    if not isinstance(shape, Sequence) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
        raise BadRequest(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}",
                         field=name)
    return tuple(shape)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A tensor from its raw bytes; a size that does not match the shape is a :class:`BadRequest`."""
    shape = checked_shape(name, datatype, shape)
    count = math.prod(shape)
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(raw):
            if offset + _LENGTH.size > len(raw):
                raise BadRequest(f"tensor {name!r}: truncated BYTES element", field=name)
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += _LENGTH.size
            if offset + length > len(raw):
                raise BadRequest(f"tensor {name!r}: truncated BYTES element", field=name)
            elements.append(raw[offset:offset + length])
            offset += length
        if len(elements) != count:
            raise BadRequest(f"tensor {name!r}: {len(elements)} BYTES elements for shape {list(shape)}", field=name)
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    kind = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(raw) != count * kind.itemsize:
        raise BadRequest(f"tensor {name!r}: {len(raw)} bytes of data for {datatype} shape {list(shape)} "
                         f"({count * kind.itemsize} expected)", field=name)
    return np.frombuffer(raw, dtype=kind).astype(DATATYPES[datatype]).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """An array's raw bytes (see the module docstring)."""
    if array.dtype == np.object_:
        return b"".join(_LENGTH.pack(len(element)) + element for element in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any,
              parameters: Mapping[str, Any]) -> np.ndarray:
    """A tensor from a JSON ``data`` list (flat or nested, row-major)."""
    shape = checked_shape(name, datatype, shape)
    flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else None
    if flat is None or len(flat) != math.prod(shape):
        raise BadRequest(f"tensor {name!r}: data must be a list of {math.prod(shape)} elements for shape "
                         f"{list(shape)}", field=name)
    if datatype == "BYTES":
        base64_content = parameters.get("content_type") == "base64"
        if not all(isinstance(element, str) for element in flat):
            raise BadRequest(f"tensor {name!r}: BYTES elements must be strings", field=name)
        try:
            elements = [base64.b64decode(e, validate=True) if base64_content else e.encode() for e in flat]
        except binascii.Error as error:
            raise BadRequest(f"tensor {name!r}: bad base64: {error}", field=name) from error
        array = np.empty(len(elements), dtype=object)
        array[:] = elements
        return array.reshape(shape)
    if not all(isinstance(element, (int, float, bool)) for element in flat):
        raise BadRequest(f"tensor {name!r}: {datatype} elements must be numbers", field=name)
    try:
        return np.asarray(flat.tolist(), dtype=DATATYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as error:
        raise BadRequest(f"tensor {name!r}: {error}", field=name) from error


def to_json(array: np.ndarray) -> list[Any]:
    """A numeric array's flat JSON ``data`` list."""
    return array.reshape(-1).tolist()
