"""Product ids as a catalog has them: kept exactly, or refused with a reason; never normalised.

The store keeps ids in JSON and compares them with Python's `>`, so an id must survive both
unchanged: integers within int64/uint64 (wider ones come back from JSON readers as floats) or
strings. Nothing is stripped, padded or converted, so two rows can never collapse into one id
("7" and "007" stay apart, and a CSV file holding both is refused as mixing id types).
"""

from __future__ import annotations

import re

from application.catalog.base import ProductId

#: The integer range every JSON reader keeps exact (orjson reads wider integers as floats).
INT_ID_MIN, INT_ID_MAX = -(2**63), 2**64 - 1
#: Decimal digits of the widest id in range: longer digit strings are refused before int().
_MAX_INT_DIGITS = len(str(INT_ID_MAX))
#: A CSV id is an integer only when written canonically: no sign but '-', no leading zeros.
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
#: Characters of a string id; longer ids are refused (they would bloat every id map).
MAX_STRING_ID_CHARS = 512


class IdRefused(ValueError):
    """This value cannot be a product id; the message says why (the caller adds where)."""


def id_from_text(text: str) -> ProductId:
    """A CSV cell as an id: canonical decimal integers in range are ints, the rest strings."""
    if _CANONICAL_INT.fullmatch(text):
        if len(text.lstrip("-")) > _MAX_INT_DIGITS:
            raise IdRefused(_out_of_range(f"of {len(text.lstrip('-'))} digits"))
        return check_int_id(int(text))
    return check_string_id(text)


def check_int_id(value: int) -> int:
    if not INT_ID_MIN <= value <= INT_ID_MAX:
        raise IdRefused(_out_of_range(str(value) if value.bit_length() < 256 else "a huge value"))
    return value


def check_string_id(value: str) -> str:
    if not value.strip():
        raise IdRefused("id is empty or blank")
    if value != value.strip():
        raise IdRefused(f"id {_short(value)} starts or ends with whitespace (ids are kept exactly)")
    if len(value) > MAX_STRING_ID_CHARS:
        raise IdRefused(f"id of {len(value)} characters (at most {MAX_STRING_ID_CHARS})")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise IdRefused(f"id {_short(value)} holds control characters")
    return value


def check_id(value: object) -> ProductId:
    """A typed id (JSON, PostgREST): int in range or a valid string, anything else refused."""
    if type(value) is int:
        return check_int_id(value)
    if type(value) is str:
        return check_string_id(value)
    return _refuse_type(value)


def _refuse_type(value: object) -> ProductId:
    name = "null" if value is None else type(value).__name__
    shown = {"dict": "an object", "list": "an array", "bool": "a boolean", "float": "a float"}
    raise IdRefused(f"id is {shown.get(name, name)}; ids are integers or strings")


def _out_of_range(what: str) -> str:
    return (
        f"integer id {what} is outside int64/uint64 [{INT_ID_MIN}, {INT_ID_MAX}]; "
        "use a string id for wider numbers"
    )


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")
