"""Small value types shared by the spec: durations, quantities, the camelCase base model."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN, max_length=32),
    Field(json_schema_extra={"x-disagg-format": "duration"}),
]
"""A Go-style duration such as ``50ms``, ``1s``, ``1m30s``."""


def duration_seconds(value: str) -> float:
    """Seconds in a Go-style duration; raises ValueError on anything else."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use forms like 50ms, 1s, 5m, 1h30m")
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(value))


QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}

Quantity = Annotated[
    str,
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=64),
    Field(json_schema_extra={"x-disagg-format": "quantity"}),
]
"""A Kubernetes resource quantity such as ``500m``, ``4``, ``64Gi``."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The numeric value of a Kubernetes quantity (``"1500m"`` -> 1.5)."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = value.strip()
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", text)
    if not match:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"invalid quantity {value!r}") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix in _DECIMAL:
        return base * _DECIMAL[suffix]
    raise ValueError(f"invalid quantity suffix in {value!r}")


class CamelModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
