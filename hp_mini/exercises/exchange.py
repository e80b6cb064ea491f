"""What passes between the grader and the kernel that runs a student's notebook.

The grader (:mod:`hp_mini.exercises.grading`) never takes a verdict from the kernel: it
reads the student's *answers* back and judges them itself. This module holds both sides
of that exchange.

In the kernel (student code runs there; nothing it sends is trusted):

* :func:`hand_in` keeps each answer given to :func:`hp_mini.exercises.check`;
* :func:`hand_over` sends the answers handed in since it last ran, encoded;
* :func:`answer_call` calls one of the student's functions on arguments that the grader
  sent (pickled by the grader, which the kernel may trust) and sends the result back.

In the grader, :func:`decode` turns what came back into values again. The encoding is
JSON with arrays as raw bytes (never pickle): it can only ever produce ``None``, bools,
numbers, strings, lists, tuples, dicts, sets, torch tensors, numpy arrays, pandas
DataFrames and Series, a few of hp_mini's data classes (:data:`DATA_CLASSES`), and
stand-ins for the student's functions (calling one asks the kernel to run it).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
import json
import math
import pickle
import sys
from collections.abc import Callable

__all__ = [
    "DATA_CLASSES",
    "MIME",
    "AnswerFormatError",
    "answer_call",
    "decode",
    "encode",
    "hand_in",
    "hand_over",
    "lookup",
    "raised",
    "take_handed_in",
]

#: The display type under which the kernel sends its replies (a JSON text).
MIME = "application/x-hp-mini-exchange"

#: hp_mini's data classes (by their name in ``hp_mini``) that may come back from the kernel.
DATA_CLASSES = ("HeadActivations", "HeadMoments", "HeadRanking", "PursuitResult", "Dictionary")

_TENSOR_DTYPES = (
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "uint8", "int8", "int16", "int32", "int64", "bool",
)
_ARRAY_KINDS = "biufcUS"
_MAX_MESSAGE = 4000

_HANDED_IN: list[tuple[str, object]] = []
_REFS: dict[int, object] = {}


class AnswerFormatError(ValueError):
    """What came back from the kernel is not a well-formed answer."""


# --------------------------------------------------------------------------- kernel side


def hand_in(name: str, answer: object) -> None:
    """Keep ``answer`` to exercise ``name`` until the grader asks for it (in the kernel)."""
    _HANDED_IN.append((str(name), answer))


def take_handed_in() -> list[tuple[str, object]]:
    """The ``(name, answer)`` pairs handed in since the last call, oldest first; forgets them."""
    taken = list(_HANDED_IN)
    _HANDED_IN.clear()
    return taken


def lookup(ref: int) -> object:
    """The student's object that the grader knows as ``ref`` (how a stand-in unpickles)."""
    return _REFS[ref]


def _send(reply: dict) -> None:
    from IPython.display import display

    display({MIME: json.dumps(reply)}, raw=True)


def encode(value: object) -> object:
    """A JSON-ready form of ``value``; functions become references kept in the kernel.

    Raises
    ------
    TypeError
        For a value of a kind the grader cannot read back.
    """
    import numpy as np

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        kind = {list: "$list", tuple: "$tuple", set: "$set", frozenset: "$set", dict: "$dict"}.get(type(value))
        if kind is None:  # a subclass: a namedtuple, an OrderedDict, ...
            kind = "$dict" if isinstance(value, dict) else "$tuple" if isinstance(value, tuple) else "$list"
        if kind == "$dict":
            return {kind: [[encode(k), encode(v)] for k, v in value.items()]}
        return {kind: [encode(v) for v in value]}
    torch = sys.modules.get("torch")  # a value can only be a tensor (or a DataFrame) when it is loaded
    if torch is not None and isinstance(value, torch.Size):
        return {"$tuple": [int(v) for v in value]}
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _TENSOR_DTYPES:
            raise TypeError(f"a tensor of dtype {t.dtype}")
        raw = (t.view(torch.int16) if dtype == "bfloat16" else t).numpy().tobytes()
        return {"$tensor": {"dtype": dtype, "shape": list(t.shape), "data": base64.b64encode(raw).decode()}}
    if isinstance(value, np.generic):
        return {"$scalar": encode(np.asarray(value))}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in _ARRAY_KINDS and value.dtype.fields is None:
            a = value if value.flags.c_contiguous else value.copy(order="C")
            return {"$ndarray": {"dtype": a.dtype.str, "shape": list(a.shape),
                                 "data": base64.b64encode(a.tobytes()).decode()}}
        if value.dtype.kind == "O":
            return {"$objects": {"shape": list(value.shape), "items": [encode(v) for v in value.ravel().tolist()]}}
        raise TypeError(f"an array of dtype {value.dtype}")
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        return {"$dataframe": {
            "columns": [encode(c) for c in value.columns],
            "index": _encode_column(value.index),
            "index_names": [encode(n) for n in value.index.names],
            "data": [_encode_column(value.iloc[:, i]) for i in range(value.shape[1])],
        }}
    if pd is not None and isinstance(value, pd.Series):
        return {"$series": {"name": encode(value.name), "index": _encode_column(value.index),
                            "index_names": [encode(n) for n in value.index.names], "data": _encode_column(value)}}
    kind = _data_class_name(value)
    if kind is not None:
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"$object": kind, "fields": fields}
    if callable(value):
        ref = len(_REFS) + 1
        _REFS[ref] = value
        return {"$function": ref, "name": str(getattr(value, "__qualname__", type(value).__qualname__))}
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__}")


def _encode_column(values) -> object:
    import numpy as np

    array = values.to_numpy()
    if isinstance(array, np.ndarray) and array.dtype.kind in _ARRAY_KINDS:
        return encode(array)
    return {"$list": [encode(v) for v in values.tolist()]}


def _data_class_name(value: object) -> str | None:
    import hp_mini

    return next((name for name in DATA_CLASSES if type(value) is getattr(hp_mini, name)), None)


def _encoded(value: object, what: str) -> dict:
    """``{"value": ...}``, or ``{"error": ...}`` saying why ``value`` cannot be sent."""
    try:
        return {"value": encode(value)}
    except (TypeError, RecursionError) as err:
        held = str(err) if isinstance(err, TypeError) else "a value nested too deeply"
        return {"error": (
            f"{what} holds {held}, which the grader cannot read back: use numbers, strings, lists, tuples, "
            "dicts, tensors, arrays, DataFrames, the chapter's results (HeadActivations, HeadRanking, ...) "
            "or functions"
        )}


def hand_over() -> None:
    """Send the grader every answer handed in since it last asked (in the kernel)."""
    _send({"answers": [{"name": name, **_encoded(answer, "the answer")} for name, answer in take_handed_in()]})


def answer_call(ref: int, payload: str) -> None:
    """Call the student's function ``ref`` on the grader's pickled arguments; send the result.

    Tensors and arrays among the arguments that the function changed in place come back
    too, so the grader sees the change.
    """
    args, kwargs = pickle.loads(base64.b64decode(payload))
    before = {key: _copy(v) for key, v in [*enumerate(args), *kwargs.items()]}
    try:
        result = lookup(ref)(*args, **kwargs)
    except Exception as err:
        _send({"raised": {"type": type(err).__name__, "message": str(err)[:_MAX_MESSAGE]}})
        return
    changed = {}
    for key, old in before.items():
        new = args[key] if isinstance(key, int) else kwargs[key]
        if old is not None and not _same(old, new):
            changed[str(key)] = new
    _send(_encoded({"result": result, "changed": changed}, "the returned value"))


def _copy(value: object):
    import numpy as np

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    return None


def _same(old, new) -> bool:
    """Whether tensor or array ``new`` still holds what its copy ``old`` holds (NaN equal to NaN)."""
    try:
        if type(old) is not type(new) or old.shape != new.shape or old.dtype != new.dtype:
            return False
        return bool(((old == new) | ((old != old) & (new != new))).all())
    except Exception:
        return False


# --------------------------------------------------------------------------- grader side


def decode(tree: object, function: Callable[[int, str], object]) -> object:
    """The value that :func:`encode` encoded, built from nothing but the listed kinds.

    ``function(ref, name)`` makes the stand-in for a student's function.

    Raises
    ------
    AnswerFormatError
        If ``tree`` is not something :func:`encode` makes.
    """
    try:
        return _decode(tree, function)
    except AnswerFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, binascii.Error) as err:
        raise AnswerFormatError(f"{type(err).__name__}: {err}") from None


def _decode(tree: object, function) -> object:
    if tree is None or isinstance(tree, (bool, str)):
        return tree
    if isinstance(tree, int):
        return int(tree)
    if isinstance(tree, float):
        return float(tree)
    if not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise AnswerFormatError(f"unexpected {type(tree).__name__}")
    kind = next(iter(tree))
    body = tree[kind]
    if kind == "$float":
        if body not in ("nan", "inf", "-inf"):
            raise AnswerFormatError(f"unexpected float {body!r}")
        return float(body)
    if kind in ("$list", "$tuple", "$set"):
        items = [_decode(v, function) for v in _list(body)]
        return items if kind == "$list" else tuple(items) if kind == "$tuple" else set(items)
    if kind == "$dict":
        out = {}
        for pair in _list(body):
            if not isinstance(pair, list) or len(pair) != 2:
                raise AnswerFormatError("a dict entry is not a pair")
            out[_decode(pair[0], function)] = _decode(pair[1], function)
        return out
    if kind == "$tensor":
        return _tensor(body)
    if kind == "$ndarray":
        return _ndarray(body)
    if kind == "$scalar":
        array = _decode(body, function)
        if not hasattr(array, "ndim") or array.ndim != 0:
            raise AnswerFormatError("a scalar is not 0-dimensional")
        return array[()]
    if kind == "$objects":
        import numpy as np

        shape = _shape(body["shape"])
        items = [_decode(v, function) for v in _list(body["items"])]
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    if kind == "$dataframe":
        import pandas as pd

        columns = [_decode(c, function) for c in _list(body["columns"])]
        data = [_decode(c, function) for c in _list(body["data"])]
        if len(columns) != len(data):
            raise AnswerFormatError("a DataFrame has as many columns as names")
        frame = pd.DataFrame(dict(enumerate(data)), index=_index(body, function))
        frame.columns = columns
        return frame
    if kind == "$series":
        import pandas as pd

        data = _decode(body["data"], function)
        return pd.Series(data, index=_index(body, function), name=_decode(body["name"], function))
    if kind == "$object":
        return _data_class(body, tree.get("fields"), function)
    if kind == "$function":
        if not isinstance(body, int) or isinstance(body, bool):
            raise AnswerFormatError("a function reference is not a number")
        return function(body, _text(tree.get("name", "function"), 200))
    raise AnswerFormatError(f"unexpected {kind!r}")


def _text(value: object, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise AnswerFormatError("a text field is not a short string")
    return value


def _list(value: object) -> list:
    if not isinstance(value, list):
        raise AnswerFormatError(f"expected a list, got {type(value).__name__}")
    return value


def _shape(value: object) -> tuple[int, ...]:
    shape = tuple(_list(value))
    if len(shape) > 64 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise AnswerFormatError(f"a bad shape {shape!r:.80}")
    return shape


def _raw(body: dict, size: int) -> bytes:
    raw = base64.b64decode(_text(body["data"], 4 * (size // 3 + 1)), validate=True)
    if len(raw) != size:
        raise AnswerFormatError(f"{len(raw)} bytes for an array of {size}")
    return raw


def _tensor(body: dict):
    import torch

    dtype = body["dtype"]
    if dtype not in _TENSOR_DTYPES:
        raise AnswerFormatError(f"a tensor of dtype {dtype!r:.40}")
    shape = _shape(body["shape"])
    stored = torch.int16 if dtype == "bfloat16" else getattr(torch, dtype)
    count = math.prod(shape)
    raw = _raw(body, count * torch.empty(0, dtype=stored).element_size())
    flat = torch.frombuffer(bytearray(raw), dtype=stored) if count else torch.empty(0, dtype=stored)
    flat = flat.view(torch.bfloat16) if dtype == "bfloat16" else flat
    return flat.reshape(shape).clone()


def _ndarray(body: dict):
    import numpy as np

    dtype = np.dtype(_text(body["dtype"], 16))
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        raise AnswerFormatError(f"an array of dtype {dtype}")
    shape = _shape(body["shape"])
    raw = _raw(body, math.prod(shape) * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _index(body: dict, function):
    import pandas as pd

    values = _decode(body["index"], function)
    names = [_decode(n, function) for n in _list(body["index_names"])]
    values = list(values) if not hasattr(values, "dtype") else values
    if len(names) > 1:
        return pd.MultiIndex.from_tuples([tuple(v) for v in values], names=names)
    return pd.Index(values, name=names[0] if names else None)


def _data_class(name: object, fields: object, function):
    import hp_mini

    if not isinstance(name, str) or name not in DATA_CLASSES:
        raise AnswerFormatError(f"an object of kind {name!r:.40}")
    cls = getattr(hp_mini, name)
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    if not isinstance(fields, dict) or not set(fields) <= allowed:
        raise AnswerFormatError(f"a {name} with unexpected fields")
    return cls(**{key: _decode(v, function) for key, v in fields.items()})


def raised(kind: object, message: object) -> Exception:
    """The exception that a student's function raised in the kernel, rebuilt for the grader.

    A built-in exception keeps its class (so a checker treats ``NotImplementedError`` as
    a stub); any other becomes an ``Exception`` subclass of the same name.
    """
    kind = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 100 else "Exception"
    message = str(message)[:_MAX_MESSAGE]
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:
            pass
    return type(kind, (Exception,), {"__module__": "student"})(message)
