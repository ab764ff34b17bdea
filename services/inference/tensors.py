"""Open Inference Protocol tensors ↔ numpy: the protocol's datatypes, shapes, typed `contents` and
`raw_input_contents` (row-major, little-endian; BYTES as 4-byte length prefixes), checked so that a bad tensor is an
InvalidInput naming it (`inputs[<name>]`) and never a numpy error. No gRPC here: the servicer passes the messages.
"""
from __future__ import annotations

import math
import struct
from typing import Sequence

import numpy as np

from services.common.errors import InvalidInput, shown

# datatype -> (numpy dtype, the InferTensorContents field that carries it; None: raw only)
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "INT8": (np.dtype(np.int8), "int_contents"), "INT16": (np.dtype(np.int16), "int_contents"),
    "INT32": (np.dtype(np.int32), "int_contents"), "INT64": (np.dtype(np.int64), "int64_contents"),
    "UINT8": (np.dtype(np.uint8), "uint_contents"), "UINT16": (np.dtype(np.uint16), "uint_contents"),
    "UINT32": (np.dtype(np.uint32), "uint_contents"), "UINT64": (np.dtype(np.uint64), "uint64_contents"),
    "FP16": (np.dtype(np.float16), None), "FP32": (np.dtype(np.float32), "fp32_contents"),
    "FP64": (np.dtype(np.float64), "fp64_contents"), "BYTES": (np.dtype(object), "bytes_contents"),
}
CONTENT_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents", "bytes_contents")
MAX_INPUTS = 64  # the model takes at most 21 inputs: a request with more is refused before anything is decoded
MAX_RANK = 4
MAX_NAME_CHARS = 64


def field_name(name: str, kind: str = "inputs") -> str:
    """How errors name a tensor: `inputs[<name>]` (or `outputs[…]`), a long name cut (the message travels in a
    bounded header)."""
    return f"{kind}[{name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + '…'}]"


def decode_inputs(inputs: Sequence, raw_contents: Sequence[bytes]) -> dict[str, np.ndarray]:
    """ModelInferRequest.inputs (+ raw_input_contents) as {name: array of the tensor's shape}; BYTES elements are
    `bytes` in an object array."""
    if len(inputs) > MAX_INPUTS:
        raise InvalidInput("inputs", f"{len(inputs)} input tensors, at most {MAX_INPUTS} are accepted")
    if raw_contents and len(raw_contents) != len(inputs):
        raise InvalidInput("raw_input_contents", f"has {len(raw_contents)} entries for {len(inputs)} inputs "
                                                 "(one per input, in the order of inputs)")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(inputs):
        field = field_name(tensor.name)
        if not tensor.name:
            raise InvalidInput(f"inputs[{index}].name", "is required")
        if tensor.name in arrays:
            raise InvalidInput(field, "is given twice")
        arrays[tensor.name] = _decode(tensor, raw_contents[index] if raw_contents else None, field)
    return arrays


def _shape(tensor, field: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise InvalidInput(f"{field}.shape", f"must be at most {MAX_RANK} non-negative dimensions, got "
                                             f"{shown(list(shape))}")
    return shape


def _decode(tensor, raw: bytes | None, field: str) -> np.ndarray:
    if tensor.datatype not in DATATYPES:
        raise InvalidInput(f"{field}.datatype", f"unknown datatype {shown(tensor.datatype)}, expected one of "
                                                f"{', '.join(DATATYPES)}")
    dtype, contents_field = DATATYPES[tensor.datatype]
    shape = _shape(tensor, field)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(f"{field}.contents", "must be empty when raw_input_contents is used")
        values = _from_raw(raw, dtype, count, field)
    else:
        values = _from_contents(tensor, dtype, contents_field, field)
    if len(values) != count:
        raise InvalidInput(field, f"shape {list(shape)} needs {count} elements, got {len(values)}")
    return values.reshape(shape)


def _from_contents(tensor, dtype: np.dtype, contents_field: str | None, field: str) -> np.ndarray:
    contents = tensor.contents
    used = [name for name in CONTENT_FIELDS if len(getattr(contents, name))]
    if any(name != contents_field for name in used):
        where = contents_field or "raw_input_contents"
        raise InvalidInput(f"{field}.contents", f"{tensor.datatype} data goes in {where}, got {', '.join(used)}")
    if contents_field is None:
        return np.empty(0, dtype)
    values = getattr(contents, contents_field)
    if dtype == object:
        return np.array(list(values) + [None], dtype=object)[:-1]  # 1-D even when every element has one length
    if dtype.kind in "iu" and dtype.itemsize < 8 and len(values):
        wide = np.asarray(values, dtype=np.int64)
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InvalidInput(field, f"a value is outside the {tensor.datatype} range")
        return wide.astype(dtype)
    return np.asarray(values, dtype=dtype)


def _from_raw(raw: bytes, dtype: np.dtype, count: int, field: str) -> np.ndarray:
    if dtype == object:
        return _raw_bytes(raw, count, field)
    if len(raw) % dtype.itemsize:
        raise InvalidInput(f"{field} (raw)", f"{len(raw)} bytes is not a whole number of {dtype.itemsize}-byte "
                                             "elements")
    if dtype == np.bool_:
        flags = np.frombuffer(raw, dtype=np.uint8)
        if len(flags) and flags.max() > 1:
            raise InvalidInput(f"{field} (raw)", "a BOOL element is neither 0 nor 1")
        return flags.astype(np.bool_)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def _raw_bytes(raw: bytes, count: int, field: str) -> np.ndarray:
    """BYTES raw content: each element a 4-byte little-endian length, then that many bytes; exactly `count` of
    them and nothing after."""
    items, offset = [], 0
    while offset < len(raw):
        if len(items) == count or offset + 4 > len(raw):
            raise InvalidInput(f"{field} (raw)", f"BYTES data does not hold exactly {count} length-prefixed elements")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"{field} (raw)", f"element {len(items)} is cut short")
        items.append(raw[offset:offset + length])
        offset += length
    values = np.empty(len(items), dtype=object)
    values[:] = items
    return values


def encode_outputs(outputs: Sequence[tuple[str, str, np.ndarray]], *, raw: bool):
    """(name, datatype, array) per output as (InferOutputTensor field dicts, raw_output_contents): raw when the
    request came raw (as tritonclient sends), typed contents otherwise (readable in grpcurl)."""
    tensors, raw_contents = [], []
    for name, datatype, array in outputs:
        dtype, contents_field = DATATYPES[datatype]
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        values = np.ascontiguousarray(array, dtype=dtype)
        if raw:
            raw_contents.append(values.astype(dtype.newbyteorder("<")).tobytes())
        else:
            tensor["contents"] = {contents_field: values.ravel().tolist()}
        tensors.append(tensor)
    return tensors, raw_contents
