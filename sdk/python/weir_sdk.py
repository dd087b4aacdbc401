"""Helpers for Weir policies written in Python (componentize-py).

``sdk/python/build.py`` puts this directory on the component's Python path, so a guest
simply does ``import weir_sdk``. The helpers use only ``weir:host/log`` and
``weir:host/config``, which every Weir world imports, plus the shared ``types``.

Errors: an exported function returning ``result<T, error>`` returns ``T`` for ``ok`` and
raises ``componentize_py_types.Err(types.Error_...)`` for ``err``; the helpers below build
those exceptions, e.g. ``raise weir_sdk.no_candidates("none in region")``.
"""

from typing import Optional

from componentize_py_types import Err
from wit_world.imports import config as _config
from wit_world.imports import log as _log
from wit_world.imports import types

U64_MAX = (1 << 64) - 1


# -- errors (cases of weir:host/types.error) ---------------------------------------------


def invalid_request(message: str) -> Err:
    """The request cannot be served as asked."""
    return Err(types.Error_InvalidRequest(message))


def no_candidates(message: str) -> Err:
    """No candidate qualifies."""
    return Err(types.Error_NoCandidates(message))


def unsupported(message: str) -> Err:
    """The operation is not supported."""
    return Err(types.Error_Unsupported(message))


def config_error(message: str) -> Err:
    """The component's configuration is missing or wrong."""
    return Err(types.Error_Config(message))


def denied(message: str) -> Err:
    """A permission the manifest does not grant."""
    return Err(types.Error_Denied(message))


def internal(message: str) -> Err:
    """Anything else."""
    return Err(types.Error_Internal(message))


# -- logging (weir:host/log) ----------------------------------------------------------------


def trace(message: str) -> None:
    _log.log(_log.Level.TRACE, str(message))


def debug(message: str) -> None:
    _log.log(_log.Level.DEBUG, str(message))


def info(message: str) -> None:
    _log.log(_log.Level.INFO, str(message))


def warn(message: str) -> None:
    _log.log(_log.Level.WARN, str(message))


def error(message: str) -> None:
    _log.log(_log.Level.ERROR, str(message))


# -- config (weir:host/config) --------------------------------------------------------------


def config_str(key: str, default: Optional[str] = None) -> Optional[str]:
    """The value of ``key`` from the manifest's ``[config]``, or ``default`` when unset."""
    value = _config.get(key)
    return default if value is None else value


def config_int(key: str, default: Optional[int] = None, *, min: int = 0, max: int = U64_MAX) -> int:
    """``key`` as a decimal integer in ``min..=max`` (default ``0..=u64::MAX``).

    ``default`` is used when the key is unset or empty; a missing key without a default, a
    malformed value or one out of range raises a ``config`` error.
    """
    raw = (config_str(key) or "").strip()
    if raw == "":
        if default is None:
            raise config_error(f"missing config key `{key}`")
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise config_error(f"config key `{key}` must be an integer, got `{raw}`") from None
    if not min <= value <= max:
        raise config_error(f"config key `{key}` must be in {min}..={max}, got {value}")
    return value


def config_optional_int(key: str, *, min: int = 0, max: int = U64_MAX) -> Optional[int]:
    """Like :func:`config_int`, but ``None`` when the key is unset or empty."""
    if (config_str(key) or "").strip() == "":
        return None
    return config_int(key, min=min, max=max)


# -- prices ---------------------------------------------------------------------------------


def price(price_per_unit: int, pixels_per_unit: int = 1, currency: str = "WEI") -> types.Price:
    """A ``weir:host/types.price``, checked to fit the WIT ``u64`` fields."""
    if not 0 <= price_per_unit <= U64_MAX:
        raise internal(f"price {price_per_unit} does not fit in u64")
    if not 1 <= pixels_per_unit <= U64_MAX:
        raise internal(f"pixels-per-unit {pixels_per_unit} must be 1..=u64::MAX")
    return types.Price(price_per_unit, pixels_per_unit, currency)


def compare_price(a: types.Price, b: types.Price) -> int:
    """-1, 0 or 1 as ``a`` costs less than, the same as, or more than ``b`` per unit of work.

    Exact: cross-multiplies instead of dividing. Currencies are not checked.
    """
    lhs = a.price_per_unit * b.pixels_per_unit
    rhs = b.price_per_unit * a.pixels_per_unit
    return (lhs > rhs) - (lhs < rhs)


def param(request: types.JobRequest, name: str):
    """The value (a ``types.ParamValue_*``) of request parameter ``name``, or ``None``."""
    for p in request.params:
        if p.name == name:
            return p.value
    return None
