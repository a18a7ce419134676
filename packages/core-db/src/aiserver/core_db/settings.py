"""Settings: frozen structs read from the environment (12-factor), one loader for all of them.

Each package declares the variables it reads as a `Section`, a frozen msgspec Struct whose field
`x_y` is read from variable `X_Y`: `CoreSettings` here (database, Redis, logging),
`aiserver.costs.settings.CostSettings`, `aiserver.documents.settings.DocumentSettings`. A service
composes the sections it needs into one Section whose fields are those sections, plus variables of
its own (`aiserver.api.settings.ApiSettings`). The foundation knows no domain's variables.

    settings = load_settings(ApiSettings)          # from os.environ
    settings.costs.model_cost_max_age_seconds

`load_settings` reads a field typed as a Section from the same environment, recursively; a tuple
field is a comma-separated list; a field whose type is a set of words (`Literal`) ignores case.
A bad value raises `SettingsError` naming the variable, its value and what is expected (a number
must be finite: `inf` and `nan` are no setting's "no bound"); checks across fields (a Section's
`__post_init__`) raise it too.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

import msgspec

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console", "auto"]

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]

S = TypeVar("S", bound="Section")


class SettingsError(ValueError):
    """A setting from the environment is malformed; the message names the variable."""


def redact_url(url: str) -> str:
    """`url` without its password, for logs, error messages and `repr`: the one before the
    `@`, and a `password` parameter of its query (`?password=...`, which asyncpg and libpq take
    for a DSN), shown as `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    location, mark, query = rest.partition("?")
    if "@" in location:
        credentials, _, host = location.rpartition("@")
        user = credentials.split(":", 1)[0]
        location = f"{user}@{host}" if user else host
    if mark:
        query = "&".join(
            "password=***" if part.partition("=")[0].strip().lower() == "password" else part
            for part in query.split("&")
        )
    return f"{scheme}://{location}{mark}{query}"


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """A group of settings, each field read from the variable of its upper-cased name.

    Fields named in `secret_fields` never appear in `repr` (only how many values they hold);
    a field whose name ends in `_url` appears without its password (`redact_url`).
    """

    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in self.secret_fields:
                count = len(value) if isinstance(value, tuple) else int(bool(value))
                shown.append(f"{name}=<{count} secret(s)>")
            elif name.endswith("_url") and isinstance(value, str):
                shown.append(f"{name}={redact_url(value)!r}")
            else:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    __str__ = __repr__


def require_scheme(variable: str, value: str, schemes: tuple[str, ...]) -> None:
    """`SettingsError` unless `value` is a URL with one of `schemes`. The message shows the
    scheme given, never the value: a URL may carry a password."""
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        given = f"one starting with {scheme[:40] + '://'!r}" if sep else "a value that is no URL"
        raise SettingsError(f"{variable} must be a URL starting with {allowed}; got {given}")


#: The `sslmode` values of a PostgreSQL DSN (libpq's, which asyncpg takes).
_SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def require_ports(variable: str, url: str) -> None:
    """`SettingsError` naming `variable` when a host of `url` (one, or several separated by
    commas, as a PostgreSQL DSN allows) has a port that is not a number from 1 to 65535, or a
    DSN's `sslmode` is none of libpq's. A malformed URL would otherwise start the service and
    fail at its first connection, without naming the variable. The message shows the port,
    never the URL."""
    _, _, rest = url.partition("://")
    location, _, query = rest.partition("?")
    hosts = location.rpartition("@")[2].partition("/")[0]
    for host in hosts.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        port = port.rpartition(":")[2] if ":" in port else ""
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise SettingsError(
                f"{variable}: the port {port[:20]!r} is not a number from 1 to 65535"
            )
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "sslmode" and value not in _SSL_MODES:
            raise SettingsError(
                f"{variable}: sslmode {value[:20]!r} is none of {', '.join(_SSL_MODES)}"
            )


class CoreSettings(Section, frozen=True, kw_only=True):
    """What every aiserver process reads: PostgreSQL, Redis, logging."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/aiserver"
    database_pool_min_size: Annotated[int, msgspec.Meta(ge=0)] = 1
    database_pool_max_size: PositiveInt = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"

    def __post_init__(self) -> None:
        require_scheme("DATABASE_URL", self.database_url, ("postgres", "postgresql"))
        require_ports("DATABASE_URL", self.database_url)
        require_scheme("REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        require_ports("REDIS_URL", self.redis_url)
        if self.database_pool_min_size > self.database_pool_max_size:
            raise SettingsError(
                "DATABASE_POOL_MIN_SIZE must not exceed DATABASE_POOL_MAX_SIZE "
                f"({self.database_pool_min_size} > {self.database_pool_max_size})"
            )


class LoggingSettings(Section, frozen=True, kw_only=True):
    """What a command that reaches neither PostgreSQL nor Redis reads: its logging, as
    `CoreSettings` has it (so that a DATABASE_URL it never uses cannot stop it)."""

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"


def _bare(annotation: Any) -> Any:
    """The type under `Annotated[...]` (constraints stay with the field for the conversion)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_section(annotation: Any) -> bool:
    kind = _bare(annotation)
    return isinstance(kind, type) and issubclass(kind, Section)


def _value(variable: str, text: str, annotation: Any) -> Any:
    kind = _bare(annotation)
    raw: Any = text
    if typing.get_origin(kind) is tuple:
        raw = tuple(part.strip() for part in text.split(",") if part.strip())
    elif typing.get_origin(kind) is Literal:
        words = {str(word).lower(): word for word in typing.get_args(kind)}
        raw = words.get(text.lower(), text)
    try:
        value = msgspec.convert(raw, annotation, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec's words ("Expected `int`, got `str`") describe a JSON value, not a variable
        expected = _expected(annotation)
        why = f"expected {expected}" if expected else str(exc)
        raise SettingsError(f"{variable}={text!r} is invalid: {why}") from None
    if isinstance(value, float) and not math.isfinite(value):
        # "inf" passes "greater than 0": a cache kept for ever (a revoked key served on the
        # other replicas for good), a timeout that never comes. No setting means "no bound" so.
        raise SettingsError(f"{variable}={text!r} is invalid: expected a finite number")
    return value


def _expected(annotation: Any) -> str | None:
    """What a variable of this type takes, in words ("a whole number from 1 to 36500"), or
    None where msgspec's own message says it better."""
    kind = _bare(annotation)
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(str(word) for word in typing.get_args(kind))
    words = {bool: "true or false", int: "a whole number", float: "a number"}.get(kind)
    if words is None or kind is bool:
        return words
    bounds: dict[str, float] = {}
    while typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        for meta in extras:
            if isinstance(meta, msgspec.Meta):
                bounds.update(
                    (name, getattr(meta, name))
                    for name in ("ge", "gt", "le", "lt")
                    if getattr(meta, name) is not None
                )
    low = f"{bounds['ge']:g}" if "ge" in bounds else None
    high = f"{bounds['le']:g}" if "le" in bounds else None
    if low is not None and high is not None:
        return f"{words} from {low} to {high}"
    parts = [words]
    if low is not None:
        parts.append(f"at least {low}")
    if "gt" in bounds:
        parts.append(f"above {bounds['gt']:g}")
    if high is not None:
        parts.append(f"at most {high}")
    if "lt" in bounds:
        parts.append(f"below {bounds['lt']:g}")
    return ", ".join(parts)


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from `environ` (default: the process environment); see the module docstring."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for name in cls.__struct_fields__:
        annotation = hints[name]
        if _is_section(annotation):
            values[name] = load_settings(_bare(annotation), env)
            continue
        text = env.get(name.upper())
        if text is not None and text.strip():
            values[name] = _value(name.upper(), text.strip(), annotation)
    return cls(**values)


def settings_for_command(prog: str, cls: type[S]) -> S:
    """The settings for a console script: a bad value exits with status 2 and says which."""
    try:
        return get_settings(cls)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def get_settings(cls: type[S]) -> S:
    """The process-wide settings of `cls`, read once from the environment."""
    return typing.cast(S, _cached(cls))


@functools.cache
def _cached(cls: type[Section]) -> Section:
    return load_settings(cls)
