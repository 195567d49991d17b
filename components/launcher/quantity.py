"""Kubernetes resource quantities ("500m", "16Gi"), checked before anything is rendered.

A quantity flag is rendered verbatim into a manifest, so a value the API
server would refuse, or would silently change, must be refused here: NaN,
infinities, spaces, non-ASCII digits, zero or negative amounts, values the
int64 accessors cannot hold, and precision Kubernetes rounds away (CPU finer
than 1m, a fraction of a byte). The grammar is the one in
k8s.io/apimachinery/pkg/api/resource/quantity.go; the exponent after `e`/`E`
is an integer because the parser there (`parseQuantityString`) reads only
digits after it, although the comment's grammar says `<signedNumber>`.

This module imports nothing from the kubernetes client, so the CLI can use it
as an argparse `type` without the `k8s` extra.
"""

from __future__ import annotations

import argparse
import decimal
import re
from decimal import Decimal

QUANTITY_PATTERN = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?",
    re.ASCII,
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Exact arithmetic: big exponents ("1e400") must compare as big, never round or trap.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])
INT64_MAX = 2**63 - 1
CPU = "cpu"
BYTES = "bytes"
# The kubelet and scheduler read CPU as int64 millicores and bytes as int64 (MilliValue / Value).
_UNIT_SCALE = {CPU: 1000, BYTES: 1}
_EXAMPLES = {CPU: "'500m', '2', '1.5'", BYTES: "'512Mi', '16Gi', '1G'"}


def quantity_value(text: str) -> Decimal:
    """The exact amount of a string that matches the Kubernetes quantity grammar.

    Raises:
        ValueError: when `text` does not match `QUANTITY_PATTERN` (NaN, inf, spaces, ...).
    """
    match = QUANTITY_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return _EXACT.multiply(number, Decimal(2 ** _BINARY[suffix]))
    exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
    # A huge exponent ("1e99999999999") is out of range anyway; clamp it rather than build the number.
    return _EXACT.scaleb(number, max(-40, min(40, exponent)))


def check_quantity(name: str, text: str, unit: str) -> Decimal:
    """Validate one quantity flag or field and return its exact amount.

    Args:
        name: how the user wrote it (`--cpu-limit`, or `cpu_limit` for the dataclass API).
        text: the quantity as it will be rendered.
        unit: `CPU` (whole millicores) or `BYTES` (whole bytes).

    Raises:
        ValueError: naming `name` and `text` and saying what would be valid.
    """
    examples = _EXAMPLES[unit]
    try:
        amount = quantity_value(text)
    except ValueError:
        raise ValueError(
            f"{name}={text!r} is not a Kubernetes quantity: a finite decimal number with an optional suffix "
            f"(m, k, M, G, T, Ki, Mi, Gi, Ti or e<exponent>) and no spaces, e.g. {examples}"
        ) from None
    if amount <= 0:
        raise ValueError(f"{name}={text!r} must be positive, e.g. {examples}")
    scaled = _EXACT.multiply(amount, Decimal(_UNIT_SCALE[unit]))
    if scaled > INT64_MAX:
        raise ValueError(f"{name}={text!r} is too large: Kubernetes holds {unit_name(unit)} as a 64-bit integer")
    if scaled != scaled.to_integral_value():
        raise ValueError(
            f"{name}={text!r} is finer than 1 {unit_name(unit)[:-1]}, which Kubernetes rounds up; "
            f"give a whole number of {unit_name(unit)}, e.g. {examples}"
        )
    return amount


def unit_name(unit: str) -> str:
    return "millicores" if unit == CPU else "bytes"


def quantity_flag(flag: str, unit: str):
    """An argparse `type` for a quantity flag: the string back, or an argparse error naming `flag`."""

    def parse(text: str) -> str:
        try:
            check_quantity(flag, text, unit)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{flag}=")) from None
        return text

    parse.__name__ = f"{unit} quantity"
    return parse


def gpu_count(text: str) -> int:
    """An argparse `type` for `--gpus`: a whole number of devices from 0 to 16."""
    if not re.fullmatch(r"[0-9]+", text, re.ASCII) or int(text) > 16:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of GPUs from 0 (CPU only) to 16")
    return int(text)
