"""Typed, validated job specs. Everything here is checked when the DAG file is parsed.

A bad value raises :class:`SpotSpecError` naming the field, before any VM can be launched.
No Airflow import: the specs are also read by the CLI and the backends.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_spot_provider.checkpoints.latest import DEFAULT_CHECKPOINT_PATTERN, compile_pattern

BACKENDS = ("local", "aws", "gcp")
#: The object-store scheme each backend's VMs write checkpoints to.
BACKEND_SCHEMES = {"local": ("file",), "aws": ("s3",), "gcp": ("gs", "gcs")}
MARKETS = ("spot", "on-demand")
_TEMPLATE = re.compile(r"{{.*?}}|{%.*?%}", re.S)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names the job may not set: the agent owns them.
RESERVED_ENV_PREFIX = "SPOT_"


#: Larger numbers are typos (and overflow timers): no interval, count or size here needs more.
MAX_NUMBER = 1e12


class SpotSpecError(ValueError):
    """An invalid job spec. The message names the field."""


def _fail(field_name: str, message: str) -> SpotSpecError:
    return SpotSpecError(f"{field_name}: {message}")


def is_templated(value: str) -> bool:
    return bool(_TEMPLATE.search(value))


def check_keys(field_name: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise _fail(field_name, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _str_list(field_name: str, value: Any, *, allow_empty: bool = True) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(field_name, f"must be a list of strings, got {type(value).__name__}")
    items = tuple(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _fail(f"{field_name}[{i}]", f"must be a string, got {type(item).__name__}")
        if "\x00" in item:
            raise _fail(f"{field_name}[{i}]", "must not contain a NUL character")
    if not allow_empty and not items:
        raise _fail(field_name, "must not be empty")
    return items


def number(field_name: str, value: Any, *, minimum: float = 0, integer: bool = False,
            allow_none: bool = False, exclusive: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise _fail(field_name, f"must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(field_name, f"must be finite, got {value!r}")
    if value > MAX_NUMBER:
        raise _fail(field_name, f"must be at most {MAX_NUMBER:g}, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        raise _fail(field_name, f"must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
    return value


def from_mapping(cls: type, field_name: str, value: Any) -> Any:
    """Build a spec dataclass from a dict (or accept an instance), rejecting unknown keys."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise _fail(field_name, f"must be a dict or {cls.__name__}, got {type(value).__name__}")
    check_keys(field_name, value, [f.name for f in dataclasses.fields(cls)])
    return cls(**value)


def validate_checkpoint_uri(uri: Any, backend: str) -> str:
    """Check the URI's scheme against the backend; a templated URI is checked up to its first template."""
    if not isinstance(uri, str) or not uri.strip():
        raise _fail("checkpoint_uri", "must be a non-empty string such as 's3://bucket/prefix/'")
    head = _TEMPLATE.split(uri, 1)[0]
    schemes = BACKEND_SCHEMES[backend]
    if "://" not in uri:
        raise _fail("checkpoint_uri", f"{uri!r} has no scheme; use {schemes[0]}://… for the {backend!r} backend")
    scheme, _, rest = uri.partition("://")
    if "{" in scheme or "{" in head[: len(scheme)]:
        raise _fail("checkpoint_uri", "the scheme must not be templated")
    if scheme not in schemes:
        raise _fail("checkpoint_uri", f"scheme {scheme!r} does not fit the {backend!r} backend (use {schemes[0]}://)")
    if not is_templated(uri):
        if scheme == "file" and not rest.startswith("/"):
            raise _fail("checkpoint_uri", f"{uri!r} must be an absolute path: file:///path/to/dir")
        location = rest.strip("/")
        if not location:
            raise _fail("checkpoint_uri", f"{uri!r} names no bucket or directory")
        if any(part == ".." for part in location.split("/")):
            raise _fail("checkpoint_uri", f"{uri!r} must not contain '..'")
    return uri


@dataclass(frozen=True)
class MachineSpec:
    """Where an attempt may run: tried in order (type × zone); ``market`` is spot or on-demand."""

    instance_types: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    market: str = "spot"
    max_price_per_hour: float | None = None
    #: After this many preemptions in one try, later attempts run on-demand (None: never).
    on_demand_after_preemptions: int | None = None
    #: When waiting for spot capacity would run past ``job_timeout``, launch on-demand instead of failing.
    on_demand_if_late: bool = False
    image: str | None = None
    disk_gb: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_types", _str_list("machine.instance_types", self.instance_types))
        object.__setattr__(self, "zones", _str_list("machine.zones", self.zones))
        if self.market not in MARKETS:
            raise _fail("machine.market", f"must be one of {', '.join(MARKETS)}, got {self.market!r}")
        number("machine.max_price_per_hour", self.max_price_per_hour, allow_none=True, exclusive=True)
        number("machine.on_demand_after_preemptions", self.on_demand_after_preemptions,
                integer=True, allow_none=True)
        if self.image is not None and (not isinstance(self.image, str) or not self.image):
            raise _fail("machine.image", "must be a non-empty string")
        number("machine.disk_gb", self.disk_gb, minimum=1, integer=True)
        if not isinstance(self.on_demand_if_late, bool):
            raise _fail("machine.on_demand_if_late", f"must be True or False, got {self.on_demand_if_late!r}")

    def placements(self) -> list[tuple[str | None, str | None]]:
        """Where to try, in order: each instance type in each zone (None: the backend's default)."""
        return [(t, z) for t in (self.instance_types or (None,)) for z in (self.zones or (None,))]

    def market_for(self, preemptions_this_try: int) -> str:
        limit = self.on_demand_after_preemptions
        if limit is not None and preemptions_this_try >= limit:
            return "on-demand"
        return self.market


@dataclass(frozen=True)
class JobSpec:
    """Everything an attempt needs, independent of the backend. Built and validated at DAG parse."""

    command: tuple[str, ...]
    checkpoint_uri: str
    backend: str = "local"
    resume_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    checkpoint_pattern: str = DEFAULT_CHECKPOINT_PATTERN
    sync_interval: float = 30.0
    poll_interval: float = 10.0
    max_preemptions: int = 10
    #: Checkpoints kept in the store after each attempt (the newest by step, plus the newest intact one);
    #: None keeps everything. Applied by the operator (``checkpoints/retention.py``).
    keep_checkpoints: int | None = None
    machine: MachineSpec = field(default_factory=MachineSpec)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise _fail("backend", f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        object.__setattr__(self, "command", _str_list("command", self.command, allow_empty=False))
        if not self.command[0].strip():
            raise _fail("command[0]", "the program to run must not be blank")
        object.__setattr__(self, "resume_args", _str_list("resume_args", self.resume_args))
        for i, arg in enumerate(self.resume_args):
            try:
                arg.format(resume_from="")
            except (KeyError, IndexError, ValueError) as err:
                raise _fail(f"resume_args[{i}]", f"only the placeholder {{resume_from}} is allowed ({err})") from err
        validate_checkpoint_uri(self.checkpoint_uri, self.backend)
        if not isinstance(self.env, Mapping):
            raise _fail("env", f"must be a dict of strings, got {type(self.env).__name__}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise _fail("env", f"{key!r} is not a valid environment variable name")
            if key.startswith(RESERVED_ENV_PREFIX):
                raise _fail(f"env[{key!r}]", f"names starting with {RESERVED_ENV_PREFIX} are set by the agent")
            if not isinstance(value, str):
                raise _fail(f"env[{key!r}]", f"must be a string, got {type(value).__name__}")
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "pass_env", _str_list("pass_env", self.pass_env))
        for name in self.pass_env:
            if not _ENV_NAME.match(name):
                raise _fail("pass_env", f"{name!r} is not a valid environment variable name")
            if name.startswith(RESERVED_ENV_PREFIX):
                raise _fail("pass_env", f"{name!r}: names starting with {RESERVED_ENV_PREFIX} are set by the agent")
        if not isinstance(self.checkpoint_pattern, str):
            raise _fail("checkpoint_pattern", "must be a string")
        try:
            compile_pattern(self.checkpoint_pattern)
        except ValueError as err:
            raise _fail("checkpoint_pattern", str(err)) from err
        number("sync_interval", self.sync_interval, exclusive=True)
        number("poll_interval", self.poll_interval, exclusive=True)
        number("max_preemptions", self.max_preemptions, integer=True)
        number("keep_checkpoints", self.keep_checkpoints, minimum=1, integer=True, allow_none=True)
        object.__setattr__(self, "machine", from_mapping(MachineSpec, "machine", self.machine))

    def rendered(self, **changes: Any) -> JobSpec:
        """A copy with rendered template values, validated again (a template may render to junk)."""
        spec = dataclasses.replace(self, **changes)
        if is_templated(spec.checkpoint_uri):
            raise _fail("checkpoint_uri", f"{spec.checkpoint_uri!r} still contains a template after rendering")
        return spec


def machine_from(value: Any) -> MachineSpec:
    return from_mapping(MachineSpec, "machine", value)
