"""Reading one value of a loose Flower config, with a clear error (shared by the config objects)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from shared.accounting import ACCOUNTANTS
from shared.errors import ConfigError

T = TypeVar("T", int, float, str, bool)
Scalar = bool | int | float | str


def read_value(
    config: Mapping[str, Any],
    key: str,
    kind: type[T],
    default: T | None = None,
    check: Callable[[T], bool] | None = None,
    rule: str = "",
) -> T:
    """Read one typed value from a Flower config mapping.

    Parameters
    ----------
    config : Mapping
        Run, node or message config.
    key : str
        Key to read (kebab-case, as written in TOML).
    kind : type
        Expected type; ints are accepted where floats are expected.
    default : optional
        Value when the key is absent; ``None`` makes the key required.
    check : callable, optional
        Extra validation; ``rule`` describes it in the error.
    """
    if key not in config:
        if default is None:
            raise ConfigError(f"config key {key!r} is required ({rule or kind.__name__}); set it")
        return default
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"config key {key!r} must be a {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be finite, got {value!r}")
    if check is not None and not check(value):
        raise ConfigError(f"config key {key!r} = {value!r} is invalid: must be {rule}")
    return value


def positive(x: float) -> bool:
    """Check for :func:`read_value`: strictly positive."""
    return x > 0


def read_accountant(config: Mapping[str, Any], default: str = "rdp") -> str:
    """The ``accountant`` key: one of :data:`shared.accounting.ACCOUNTANTS`."""
    return read_value(
        config,
        "accountant",
        str,
        default,
        lambda v: v in ACCOUNTANTS,
        f"one of {list(ACCOUNTANTS)}",
    )
