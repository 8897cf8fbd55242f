"""Reading the pickles of the CIFAR python archives without letting them run code.

A pickle can name any importable callable and call it (`os.system` included), so
`pickle.load` on a downloaded file is code execution. The CIFAR batches only hold
dicts, lists, str, bytes, ints and, in the numpy-pickled versions, plain numeric
arrays. Every callable a pickle can reach goes through `Unpickler.find_class`; this one
admits only what those files need:

- numpy's array reconstructors (`_reconstruct`, `ndarray`, `dtype`, and `_frombuffer` of
  pickle protocol 5) under the numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) names. They
  are answered with inert stand-ins, not numpy's own: numpy's `dtype.__setstate__`
  accepts any flags, so a tampered pickle could mark a uint8 dtype as holding Python
  objects and have numpy dereference the raw bytes as pointers. The stand-ins record
  shape, dtype string and raw bytes, and `safe_loads` builds fresh arrays from them
  with `np.frombuffer`, for simple numeric dtypes only;
- `_codecs.encode(text, "latin1")`, which is how Python 3 writes `bytes` at pickle
  protocol 2 (the protocol these archives use), wrapped so only latin-1 is reachable,
  and `bytes()` with no argument (how the same protocol writes b"").

Anything else raises `DataError` naming the file and the refused global.
"""
from __future__ import annotations

import io
import math
import pickle

import numpy as np

from .base import DataError

_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric")
_NUMERIC_KINDS = "biuf"


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # The only use of _codecs.encode in a protocol-2 pickle is bytes -> latin-1 text -> bytes.
    if not isinstance(text, str) or _text(encoding).replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not "
                                     "the latin-1 bytes encoding pickles use")
    return text.encode("latin-1")


class _NdarrayMarker:
    """What the pickle gets for `numpy.ndarray`: only usable as `_reconstruct`'s subtype."""


class _DtypeStub:
    """Stand-in for `numpy.dtype(descr, align, copy)`; `__setstate__` may set the byte order."""

    def __init__(self, descr, align=False, copy=False):
        self.descr = _text(descr)
        self.byteorder = "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("only simple numeric numpy dtypes are accepted")
        self.byteorder = _text(state[1])

    def resolve(self) -> np.dtype:
        try:
            dt = np.dtype(self.descr)
        except TypeError as e:
            raise pickle.UnpicklingError(f"bad numpy dtype {self.descr!r}") from e
        if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise pickle.UnpicklingError(f"numpy dtype {dt} is not a plain number type")
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _ArrayStub:
    """Stand-in for the empty array `_reconstruct` makes; `__setstate__` brings the data."""

    def __init__(self):
        self.array: np.ndarray | None = None

    def __setstate__(self, state):
        # numpy's array state: (version, shape, dtype, is_fortran, raw); version 0 omits version.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _build_array(raw, dtype, shape, "F" if fortran else "C")


def _build_array(raw, dtype, shape, order) -> np.ndarray:
    """A fresh array from raw bytes, checked against shape and dtype before any copy."""
    if not isinstance(dtype, _DtypeStub):
        raise pickle.UnpicklingError(f"numpy array dtype is a {type(dtype).__name__}")
    dt = dtype.resolve()
    if not isinstance(raw, (bytes, bytearray, str)):
        raise pickle.UnpicklingError(f"numpy array data is a {type(raw).__name__}, not bytes")
    raw = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
    shape = tuple(int(s) for s in shape)
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise pickle.UnpicklingError(f"array data has {len(raw)} bytes, shape {shape} of "
                                     f"{dt} needs {math.prod(shape) * dt.itemsize}")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=_text(order)).copy()


def _frombuffer(raw, dtype, shape, order):
    # numpy's reducer at pickle protocol 5 (Python 3.14's default).
    return _build_array(raw, dtype, shape, order)


def _empty_bytes(*args):
    # Python writes b"" at protocols < 3 as a call to bytes() with no argument.
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NdarrayMarker:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not numpy.ndarray")
    return _ArrayStub()


def _allowed(module: str, name: str):
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module in ("builtins", "__builtin__") and name == "bytes":
        return _empty_bytes
    if module in _NUMPY_MODULES:
        return {"_reconstruct": _reconstruct, "_frombuffer": _frombuffer,
                "ndarray": _NdarrayMarker, "dtype": _DtypeStub}.get(name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = _allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found


_PLAIN = (str, bytes, int, float, bool, type(None))


def _materialise(obj):
    """Swap the array stand-ins for real arrays; refuse anything but plain data."""
    if isinstance(obj, dict):
        return {_materialise(k): _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    if isinstance(obj, np.ndarray):  # only _build_array makes these
        return obj
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without data")
        return obj.array
    if type(obj) not in _PLAIN:
        raise pickle.UnpicklingError(f"unexpected {type(obj).__name__} in the data")
    return obj


def safe_loads(data: bytes, source: str) -> object:
    """Unpickle `data` (read from `source`, named in errors) with the restricted unpickler.

    `encoding="bytes"` keeps Python 2 strings (the official archives' keys) as bytes,
    the same as the usual `pickle.load(f, encoding="bytes")` recipe.
    """
    try:
        return _materialise(_RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())
    except pickle.UnpicklingError as e:
        raise DataError(f"{source}: unsafe or invalid pickle ({e})") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, UnicodeError, RecursionError) as e:
        raise DataError(f"{source}: corrupt pickle ({type(e).__name__}: {e})") from None
