"""JSON request bodies whose tensors go straight from bytes to numpy, at a bounded cost.

A large body is scanned once: everything is parsed to Python values except the arrays at tensor
paths (KServe `inputs[i].data`, TF-Serving `instances` and `inputs`), which stay `Span`s over
the raw bytes. The protocol adapter checks names, datatypes and shapes against the model first;
only then does `array_from_json` parse a span, in chunks, with simdjson into an array of the
declared size: no Python object per element, memory bounded by the tensor plus a chunk, and
more elements than declared are refused at the first one past the count. Nested data must be
nested exactly as the shape; its bracket skeleton is compared with the shape's before any number
is parsed. Small bodies (most requests) are parsed whole by orjson: cheaper than a scan, and a
64 KiB body cannot hold enough values to hurt.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from modelkiln.runtime.errors import InvalidInput
from modelkiln.runtime.serving import tensors

SCAN_FROM_BYTES = 64 * 1024  # smaller bodies: orjson (and decoded on the event loop)
CHUNK_BYTES = 128 * 1024  # numbers parsed per simdjson call: bounds its buffers, keeps them hot
MAX_VALUES = 100_000  # JSON values outside tensor data (names, shapes, parameters, instances)
MAX_DEPTH = 64  # nesting outside tensor data, and the rank of nested tensor data

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\.)*"')  # unescaped and checked by orjson
_SCALAR = re.compile(rb'[^ \t\n\r\[\]{},:"]+')  # a number, true, false or null, checked by orjson
_LEADING_BRACKETS = re.compile(rb"[\[ \t\n\r]*")
_NUMBER_CHARS = b"0123456789.eE+- \t\n\r"
_BOOL_CHARS = b"truefals \t\n\r"
_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")
_BUFFER_TYPES = {"d": np.float64, "i": np.int64, "u": np.uint64}

Path = tuple  # keys and indices from the document's root
# Where tensors are: each pattern is a path whose items are a key, or `int` (any index) or `str`
# (any key). An array there whose first element is an object is a structure, not a tensor
# (KServe's `inputs` list, TF-Serving's `instances` of objects).
KSERVE_TENSORS = (("inputs", int, "data"),)
TFSERVING_TENSORS = (("instances",), ("instances", int, str), ("inputs",), ("inputs", str))


@dataclass(frozen=True)
class Span:
    """A tensor's JSON array left as bytes: `body[start:end]` is `[ ... ]`."""

    body: bytes
    start: int
    end: int
    nested: bool

    @property
    def empty(self) -> bool:
        return _WHITESPACE.match(self.body, self.start + 1).end() == self.end - 1


def loads(body: bytes | bytearray, tensor_paths: tuple[Path, ...]) -> Any:
    """The JSON document; arrays at `tensor_paths` are `Span`s when the body is large."""
    if len(body) < SCAN_FROM_BYTES:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise InvalidInput(f"malformed JSON: {error}") from None
        if b"true" in body or b"false" in body:  # numpy would read [true, 2] as [1, 2]
            for pattern in tensor_paths:
                if all(b'"%s"' % key.encode() in body for key in pattern if isinstance(key, str)):
                    _spans_for_booleans(document, pattern)
        return document
    return _Scanner(body, tensor_paths).document()


def _spans_for_booleans(node, pattern: Path) -> None:
    """Tensor values holding booleans become spans, which tell BOOL data from numbers."""
    want, rest = pattern[0], pattern[1:]
    if isinstance(node, dict):
        keys = node if want is str else (want,) if want in node else ()
    elif isinstance(node, list) and want is int:
        keys = range(len(node))
    else:
        return
    for key in keys:
        value = node[key]
        if rest:
            _spans_for_booleans(value, rest)
        elif isinstance(value, list) and not (value and isinstance(value[0], dict)):
            text = orjson.dumps(value)
            if b"true" in text or b"false" in text:
                node[key] = Span(text, 0, len(text), b"[" in text[1:])


def is_large(length: int) -> bool:
    """Whether decoding this many bytes of JSON takes long enough to leave the event loop."""
    return length >= SCAN_FROM_BYTES


def _matches(path: Path, pattern: Path) -> bool:
    return len(path) == len(pattern) and all(
        isinstance(item, want) if isinstance(want, type) else item == want
        for item, want in zip(path, pattern))


class _Scanner:
    """A recursive-descent JSON parser that skips over tensor arrays at memchr speed."""

    def __init__(self, body: bytes, tensor_paths: tuple[Path, ...]) -> None:
        self.body = body
        self.pos = 0
        self.values = 0
        self.tensor_paths = tensor_paths

    def document(self) -> Any:
        value = self.value(())
        self.skip_whitespace()
        if self.pos != len(self.body):
            raise self.error("unexpected data after the document")
        return value

    def error(self, what: str) -> InvalidInput:
        return InvalidInput(f"malformed JSON: {what} at byte {self.pos}")

    def skip_whitespace(self) -> bytes:
        self.pos = _WHITESPACE.match(self.body, self.pos).end()
        return self.body[self.pos:self.pos + 1]

    def value(self, path: Path) -> Any:
        char = self.skip_whitespace()
        self.values += 1
        if self.values > MAX_VALUES:
            raise InvalidInput(f"malformed request: more than {MAX_VALUES} JSON values besides "
                               f"tensor data")
        if len(path) > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")
        if char == b"{":
            return self.object(path)
        if char == b"[":
            if any(_matches(path, pattern) for pattern in self.tensor_paths):
                span = self.span()
                if span is not None:
                    return span
            return self.array(path)
        found = (_STRING if char == b'"' else _SCALAR).match(self.body, self.pos)
        if found is None:
            raise self.error("expected a value")
        try:
            value = orjson.loads(found.group())
        except orjson.JSONDecodeError:
            raise self.error(f"invalid value {found.group()[:40]!r}") from None
        self.pos = found.end()
        return value

    def expect(self, closing: bytes) -> bool:
        """After an item: True at the closing bracket, False at a comma."""
        char = self.skip_whitespace()
        if char not in (b",", closing):
            raise self.error(f"expected ',' or '{closing.decode()}'")
        self.pos += 1
        return char == closing

    def object(self, path: Path) -> dict:
        self.pos += 1
        result = {}
        if self.skip_whitespace() == b"}":
            self.pos += 1
            return result
        while True:
            if self.skip_whitespace() != b'"':
                raise self.error("expected a string key")
            key = self.value(path)
            if self.skip_whitespace() != b":":
                raise self.error("expected ':'")
            self.pos += 1
            result[key] = self.value(path + (key,))
            if self.expect(b"}"):
                return result

    def array(self, path: Path) -> list:
        self.pos += 1
        result = []
        if self.skip_whitespace() == b"]":
            self.pos += 1
            return result
        while True:
            result.append(self.value(path + (len(result),)))
            if self.expect(b"]"):
                return result

    def span(self) -> Span | None:
        """The tensor array starting here, or None when it holds more than numbers and arrays."""
        body, start = self.body, self.pos
        first = _WHITESPACE.match(body, start + 1).end()
        if body[first:first + 1] == b"{":
            return None
        # Numbers, booleans and brackets hold no '}' or '"': the array ends at the last ']'
        # before the next of those (the end of the enclosing object, or its next key).
        brace = body.find(b"}", start)
        brace = len(body) if brace < 0 else brace
        quote = body.find(b'"', start, brace)
        end = body.rfind(b"]", start, brace if quote < 0 else quote) + 1
        if end == 0:
            return None
        nested = body.find(b"[", start + 1, end) >= 0
        if nested and _count(body, b"[", start, end) != _count(body, b"]", start, end):
            return None
        self.pos = end
        return Span(body, start, end, nested)


def array_from_json(spec, shape: tuple[int, ...] | None, value: Any) -> np.ndarray:
    """A tensor from a JSON value: a `Span` of a large body, or values orjson parsed.

    `shape` is the declared one (KServe), or None when the nesting is the shape (TF-Serving).
    """
    if isinstance(value, Span):
        return _array_from_span(spec, shape, value)
    return tensors.array_from_values(spec, shape, value, from_json=True)


def _array_from_span(spec, shape: tuple[int, ...] | None, span: Span) -> np.ndarray:
    name = spec.name
    body, start, end = span.body, span.start, span.end
    if not span.nested:
        numbers, lo, hi = body, start + 1, end - 1
        if shape is None and not spec.rank_is_dynamic and len(spec.shape) != 1:
            got = _count(body, b",", lo, hi) + 1 if body[lo:hi].strip() else 0
            tensors.check_shape(spec, [got])  # raises: the model wants another rank
        if shape is not None and math.prod(shape) > (hi - lo + 1) // 2:
            raise InvalidInput(f"input '{name}': shape {tensors.describe_shape(shape)} needs "
                               f"{math.prod(shape)} elements, got fewer ({hi - lo} bytes of "
                               f"data)")
    else:
        # The rank first (cheap, refuses data nested deeper than the shape), then the bracket
        # skeleton against the shape's, all before a single number is parsed.
        rank = body.count(b"[", start, _LEADING_BRACKETS.match(body, start).end())
        want = (len(shape) if shape is not None
                else None if spec.rank_is_dynamic else len(spec.shape))
        if want is not None and rank != want:
            expected = tensors.describe_shape(shape if shape is not None else spec.shape)
            raise InvalidInput(f"input '{name}': data is nested {rank} levels deep, shape "
                               f"{expected} has {want}")
        if rank > MAX_DEPTH:
            raise InvalidInput(f"input '{name}': data is nested {rank} levels deep, more "
                               f"than {MAX_DEPTH}")
        skeleton = _translate(body, start, end, None,
                              _BOOL_CHARS if spec.datatype.name == "BOOL" else _NUMBER_CHARS)
        if skeleton.translate(None, b"[],"):
            raise InvalidInput(f"input '{name}': expected {spec.datatype.name} data, got "
                               f"non-numeric values")
        nesting = _nesting(skeleton, rank)
        if nesting is None:
            raise InvalidInput(f"input '{name}': data is not a rectangular array of numbers")
        if nesting[-1] == 1 and not _translate(body, start, end, None, b"[], \t\n\r"):
            nesting = nesting[:-1] + (0,)  # '[]' innermost arrays: empty, not one element each
        if shape is None:
            shape = tensors.check_shape(spec, list(nesting))
        else:
            tensors.check_nesting(spec, shape, nesting)
        if skeleton != _skeleton(nesting):
            raise InvalidInput(f"input '{name}': data is not a rectangular array of numbers")
        del skeleton  # at most the body and one copy of it are held at a time
        if not math.prod(shape):
            return np.empty(shape, spec.datatype.dtype)
        numbers = _translate(body, start, end, _BRACKETS_TO_SPACES)
        lo, hi = 0, len(numbers)
    array = _parse_numbers(spec, numbers, lo, hi, shape, start if span.nested else 0)
    if shape is None:
        return tensors.check_shape_of(spec, array)
    return array.reshape(shape)


# Whole-body passes go a megabyte at a time: between two, the event loop's thread gets the GIL.
PASS_BYTES = 1 << 20


def _count(buffer, char: bytes, start: int, end: int) -> int:
    return sum(buffer.count(char, at, min(at + PASS_BYTES, end))
               for at in range(start, end, PASS_BYTES))


def _translate(buffer, start: int, end: int, table, delete: bytes = b"") -> bytearray:
    result = bytearray()
    for at in range(start, end, PASS_BYTES):
        result += buffer[at:min(at + PASS_BYTES, end)].translate(table, delete)
    return result


def _nesting(skeleton: bytes, rank: int) -> tuple[int, ...] | None:
    """The shape a rectangular skeleton ('[', ']' and ',' only) has, if it has one.

    The first array at depth k ends at the first run of rank-k ']'; with d children of
    skeleton length `inner` it is d * (inner + 1) + 1 long. Empty innermost arrays read as
    one element each (the caller tells them apart); the caller compares the whole skeleton.
    """
    dims: list[int] = []
    inner = 0
    for depth in range(rank - 1, -1, -1):
        close = skeleton.find(b"]" * (rank - depth))
        if close < 0:
            return None
        length = close + rank - depth - depth
        count, rest = divmod(length - 1, inner + 1)
        if rest or count < 1:
            return None
        dims.append(count)
        inner = length
    return tuple(reversed(dims)) if inner == len(skeleton) else None


def _skeleton(shape: tuple[int, ...]) -> bytes:
    text = b"[" + b"," * (shape[-1] - 1) + b"]" if shape[-1] else b"[]"
    for size in reversed(shape[:-1]):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


_parsers = threading.local()  # a simdjson parser is not thread-safe; its buffers stay warm


def _parse_numbers(spec, buffer: bytes, lo: int, hi: int, shape, base: int) -> np.ndarray:
    """The comma-separated values in buffer[lo:hi], chunk by chunk, as many as `shape` holds.

    `base`: where buffer[0] is in the body, for the byte offsets in messages.
    """
    count = None if shape is None else math.prod(shape)
    dtype = spec.datatype.dtype
    out = np.empty(count, dtype) if count is not None else None
    low, high = _limits(dtype)
    pieces = []
    filled = 0
    pos = lo
    view = memoryview(buffer)
    while pos < hi:
        cut = buffer.find(b",", pos + CHUNK_BYTES, hi) if hi - pos > CHUNK_BYTES else -1
        cut = hi if cut < 0 else cut
        piece = b"".join((b"[", view[pos:cut], b"]"))  # one copy: simdjson wants an array
        values = _parse_chunk(spec, piece, base + pos)
        if not values.size and pos > lo:
            raise InvalidInput(f"malformed JSON: input '{spec.name}' data ends with a comma")
        if out is None:
            pieces.append(tensors.cast_checked(spec, values))
        elif filled + values.size > count:
            raise InvalidInput(f"input '{spec.name}': shape {tensors.describe_shape(shape)} "
                               f"needs {count} elements, got more (element {count + 1} is "
                               f"past it)")
        else:  # straight into the tensor: two reductions check the range, no temporary
            if values.size and (values.min() < low or values.max() > high):
                raise tensors.out_of_range(spec)
            np.copyto(out[filled:filled + values.size], values, casting="unsafe")
        filled += values.size
        pos = cut + 1
    view.release()
    if out is None:
        return np.concatenate(pieces) if pieces else np.empty(0, dtype)
    if filled != count:
        raise InvalidInput(f"input '{spec.name}': shape {tensors.describe_shape(shape)} "
                           f"needs {count} elements, got {filled}")
    return out


def _limits(dtype: np.dtype) -> tuple[float, float]:
    """The values that cast to `dtype` as themselves: a float rounds to inf from half an ulp
    past the largest finite value on (1e39 in FP32, 65520 in FP16)."""
    if dtype.kind == "b":
        return 0, 1
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return info.min, info.max
    largest = np.finfo(dtype).max
    edge = float(largest) + float(np.spacing(np.nextafter(largest, 0))) / 2
    return -np.nextafter(edge, 0), np.nextafter(edge, 0)


def _parse_chunk(spec, piece: bytes, offset: int) -> np.ndarray:
    """One '[v, v, ...]' chunk: float64, int64 or uint64 numbers (booleans for BOOL)."""
    datatype = spec.datatype
    if datatype.name == "BOOL":
        try:
            values = np.array(orjson.loads(piece))
        except orjson.JSONDecodeError as error:
            raise InvalidInput(f"malformed JSON: input '{spec.name}' data near byte "
                               f"{offset}: {error}") from None
        if values.size and values.dtype.kind not in datatype.json_kinds:
            raise InvalidInput(f"input '{spec.name}': expected {datatype.name} data, got "
                               f"{tensors.kind_name(values)}")
        return values
    of_type = "d" if datatype.dtype.kind == "f" else "u" if datatype.name == "UINT64" else "i"
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    parsed = None
    try:
        parsed = parser.parse(piece)
        return np.frombuffer(parsed.as_buffer(of_type=of_type), _BUFFER_TYPES[of_type])
    except TypeError:  # an element of another kind: name the first one
        parsed = None
        numbers = (int, float) if of_type == "d" else int
        odd = next(value for value in orjson.loads(piece)
                   if isinstance(value, bool) or not isinstance(value, numbers))
        raise InvalidInput(f"input '{spec.name}': expected {datatype.name} data, got "
                           f"{tensors.kind_name(np.array([odd]))}") from None
    except (ValueError, RuntimeError) as error:  # RuntimeError: an integer over 64 bits
        if str(error).startswith(("NUMBER_OUT_OF_RANGE", "BIGINT_ERROR")):
            raise tensors.out_of_range(spec) from None
        if str(error).startswith("NUMBER_ERROR"):  # 1e400 as well as 01 or 1.
            raise InvalidInput(f"input '{spec.name}': data near byte {offset} has a number "
                               f"that is malformed or out of range for "
                               f"{datatype.name}") from None
        raise InvalidInput(f"malformed JSON: input '{spec.name}' data near byte {offset}: "
                           f"{str(error).split('.')[0]}") from None
    finally:
        del parsed  # the parser refuses to parse again while a proxy of its document lives
