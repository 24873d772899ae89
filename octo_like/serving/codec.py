"""openpi's wire format: msgpack, with numpy arrays and scalars as tagged maps (never pickle).

    array:  {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}
    scalar: {b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}

Object, void and complex dtypes are refused both ways: a frame can describe only plain numbers
and bytes, so decoding one never builds anything but arrays, scalars, maps, lists and strings.
"""

import msgpack
import numpy as np

REFUSED_KINDS = ("O", "V", "c")


class CodecError(ValueError):
    """A frame that is not a message of this format; the text says why in one line."""


def _encode(value):
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind in REFUSED_KINDS:
        raise CodecError(f"cannot send dtype {value.dtype}: only numbers and bytes travel")
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": array.shape}
    if isinstance(value, np.generic):
        return {b"__npgeneric__": True, b"data": value.item(), b"dtype": value.dtype.str}
    raise CodecError(f"cannot send {type(value).__name__}")


def _dtype(text) -> np.dtype:
    try:
        dtype = np.dtype(text.decode() if isinstance(text, bytes) else str(text))
    except TypeError as error:
        raise CodecError(f"unknown dtype {text!r}") from error
    if dtype.kind in REFUSED_KINDS or dtype.hasobject:
        raise CodecError(f"refused dtype {dtype}: only numbers and bytes travel")
    return dtype


def _decode(tagged: dict):
    if b"__ndarray__" in tagged:
        dtype, shape = _dtype(tagged[b"dtype"]), tuple(int(size) for size in tagged[b"shape"])
        data = tagged[b"data"]
        if not isinstance(data, bytes) or len(data) != dtype.itemsize * int(np.prod(shape)):
            raise CodecError(f"array of shape {shape} and dtype {dtype} with {len(data)} bytes of data")
        return np.frombuffer(data, dtype).reshape(shape)
    if b"__npgeneric__" in tagged:
        return _dtype(tagged[b"dtype"]).type(tagged[b"data"])
    return tagged


def packb(message) -> bytes:
    return msgpack.packb(message, default=_encode)


def unpackb(frame: bytes):
    """The message of a binary frame; CodecError when it is not one."""
    try:
        return msgpack.unpackb(frame, object_hook=_decode, strict_map_key=False)
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError) as error:
        raise CodecError(f"not a msgpack message ({type(error).__name__}: {error})") from None
