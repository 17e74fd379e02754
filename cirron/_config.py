"""Resolved configuration: one frozen object, built once per ``Cirron``.

Each value resolves, first match wins: explicit argument → ``profile(config={...})`` (an inline
dict shaped like the project file's ``profiling`` section) → ``CIRRON_*`` environment variable →
``~/.cirron/config.toml`` → the ``profiling`` section of the project file → the default.
The source of every value is kept (``Config.sources``) so ``cirron status`` can show it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirron._errors import CirronConfigError
from cirron._project import SNAPSHOT_MODES

ENV_API_KEY = "CIRRON_API_KEY"
ENV_API_ENDPOINT = "CIRRON_API_ENDPOINT"
ENV_WORKSPACE_ID = "CIRRON_WORKSPACE_ID"
ENV_SPOOL_DIR = "CIRRON_SPOOL_DIR"
ENV_OUTPUT = "CIRRON_OUTPUT"
ENV_FLUSH_INTERVAL = "CIRRON_FLUSH_INTERVAL"
ENV_SNAPSHOTS = "CIRRON_SNAPSHOTS"
ENV_SAMPLE_RATE = "CIRRON_SAMPLE_RATE"
ENV_TRACE_BUFFER_MAX_SPANS = "CIRRON_TRACE_BUFFER_MAX_SPANS"
ENV_MARK_BUFFER_CAPACITY = "CIRRON_MARK_BUFFER_CAPACITY"
ENV_MAX_SPOOL_BYTES = "CIRRON_MAX_SPOOL_BYTES"
ENV_SHUTDOWN_TIMEOUT = "CIRRON_SHUTDOWN_TIMEOUT"
ENV_ENABLED = "CIRRON_ENABLED"
ENV_FRAMEWORKS = "CIRRON_FRAMEWORKS"
ENV_GPU = "CIRRON_GPU"
#: Where ``~/.cirron/config.toml`` is looked for (tests point it elsewhere).
ENV_CONFIG_FILE = "CIRRON_CONFIG_FILE"

SINK_NAMES = ("spool", "log", "stdout", "otlp", "platform", "none")

#: name → (env var, parser, default)
_FIELDS: dict[str, tuple[str, str, Any]] = {
    "api_key": (ENV_API_KEY, "str", None),
    "api_endpoint": (ENV_API_ENDPOINT, "str", "https://api.cirron.com"),
    "workspace_id": (ENV_WORKSPACE_ID, "str", None),
    "spool_dir": (ENV_SPOOL_DIR, "path", ".cirron/spool"),
    "output": (ENV_OUTPUT, "output", ("spool",)),
    "flush_interval": (ENV_FLUSH_INTERVAL, "pos_float", 1.0),
    "snapshots": (ENV_SNAPSHOTS, "snapshots", "stats"),
    "sample_rate": (ENV_SAMPLE_RATE, "pos_float", 0.01),
    "trace_buffer_max_spans": (ENV_TRACE_BUFFER_MAX_SPANS, "pos_int", 100_000),
    "mark_buffer_capacity": (ENV_MARK_BUFFER_CAPACITY, "pos_int", 65_536),
    "max_spool_bytes": (ENV_MAX_SPOOL_BYTES, "bytes", 1 << 30),
    "shutdown_timeout": (ENV_SHUTDOWN_TIMEOUT, "pos_float", 5.0),
    "enabled": (ENV_ENABLED, "bool", True),
    #: None: the integrations whose package is imported when the session starts (autodetect).
    "frameworks": (ENV_FRAMEWORKS, "names", None),
    #: GPU time and peak memory for every scope (CUDA only; framework spans have them anyway).
    "gpu": (ENV_GPU, "bool", False),
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
SECRET_FIELDS = ("api_key",)


class ConfigFileUnreadable(CirronConfigError):
    """``~/.cirron/config.toml`` exists (or may) but cannot be read: an unreadable or missing
    ``$HOME``, a file without read permission. ``Config.resolve`` goes on without it."""


def config_file_path() -> Path:
    override = os.environ.get(ENV_CONFIG_FILE)
    if override:
        return Path(override)
    try:
        home = Path.home()
    except (RuntimeError, KeyError, OSError) as exc:  # no $HOME and no passwd entry
        raise ConfigFileUnreadable(f"~/.cirron/config.toml: no home directory ({exc})") from None
    return home / ".cirron" / "config.toml"


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    path = path or config_file_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigFileUnreadable(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(data.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001
        raise CirronConfigError(f"{path}: not valid TOML: {exc}") from None


def _parse(name: str, kind: str, value: Any, source: str) -> Any:
    where = f"{name} (from {source})"
    if kind == "str":
        if not isinstance(value, str):
            raise CirronConfigError(f"{where} must be a string, got {value!r}")
        return value
    if kind == "path":
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise CirronConfigError(f"{where} must be a directory path, got {value!r}")
        return Path(value)
    if kind == "output":
        names = value.split(",") if isinstance(value, str) else value
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise CirronConfigError(f"{where} must be a sink name or a list of them, got {value!r}")
        out = tuple(str(n).strip() for n in names if str(n).strip())
        for n in out:
            if n not in SINK_NAMES:
                raise CirronConfigError(f"{where}: unknown sink {n!r}; choose from {', '.join(SINK_NAMES)}")
        return out or ("none",)
    if kind == "snapshots":
        if value is False or value is None:
            return "off"
        if value not in SNAPSHOT_MODES:
            raise CirronConfigError(f"{where} must be one of {', '.join(SNAPSHOT_MODES)}, got {value!r}")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise CirronConfigError(f"{where} must be true or false (1/0), got {value!r}")
    if kind == "names":
        names = value.split(",") if isinstance(value, str) else value
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise CirronConfigError(f"{where} must be a list of names, got {value!r}")
        return tuple(str(n).strip() for n in names if str(n).strip())
    if kind == "bytes":
        size = parse_byte_size(value)
        if size is None:
            raise CirronConfigError(f"{where} must be a positive size in bytes (1073741824, 1GB, 512MiB), "
                                    f"got {value!r}")
        return size
    if kind in ("pos_float", "pos_int"):
        try:
            num = float(value) if kind == "pos_float" else int(value)
        except (TypeError, ValueError):
            raise CirronConfigError(f"{where} must be a positive number, got {value!r}") from None
        if isinstance(value, bool) or not num > 0:
            raise CirronConfigError(f"{where} must be a positive number, got {value!r}")
        return num
    raise AssertionError(kind)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_byte_size(value: Any) -> int | None:
    """``1073741824``, ``"1GB"`` (10^9), ``"1GiB"`` (2^30), ``"512 MiB"``, ``"1.5G"`` → bytes; None
    when it is not a positive size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    m = _SIZE_RE.match(value)
    if m is None:
        return None
    unit = (m.group(2) or "").lower().removesuffix("b")
    size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    return size if size > 0 else None


def check_inline(inline: Any) -> dict[str, Any]:
    """``profile(config=...)``: a dict of the names above (as in the ``profiling`` section)."""
    if inline is None:
        return {}
    if not isinstance(inline, dict):
        raise CirronConfigError(f"config= must be a dict shaped like cirron.yaml's profiling section, "
                                f"not {type(inline).__name__}")
    unknown = sorted(str(k) for k in inline if k not in _FIELDS)
    if unknown:
        raise CirronConfigError(f"config= has unknown key(s) {', '.join(unknown)}; "
                                f"known: {', '.join(_FIELDS)}")
    return inline


def enabled_in_env() -> bool:
    """False when ``CIRRON_ENABLED`` says off (read without resolving anything else)."""
    return os.environ.get(ENV_ENABLED, "").strip().lower() not in _FALSE


@dataclass(frozen=True)
class Config:
    api_key: str | None
    api_endpoint: str
    workspace_id: str | None
    spool_dir: Path
    output: tuple[str, ...]
    flush_interval: float
    snapshots: str
    sample_rate: float
    trace_buffer_max_spans: int
    mark_buffer_capacity: int
    max_spool_bytes: int
    shutdown_timeout: float
    enabled: bool = True
    frameworks: tuple[str, ...] | None = None
    gpu: bool = False
    #: name → "argument" | "env CIRRON_…" | "<config.toml path>" | "<project file>" | "default"
    sources: dict[str, str] = field(default_factory=dict)
    project_name: str | None = None
    project_version: str | None = None
    framework: str | None = None
    project_data: dict[str, Any] = field(default_factory=dict)
    project_file: Path | None = None
    #: What could not be read and was gone without (e.g. an unreadable ``~/.cirron/config.toml``).
    problems: tuple[str, ...] = ()

    @classmethod
    def resolve(cls, explicit: dict[str, Any], project: Any | None = None,
                project_file: Path | None = None, inline: dict[str, Any] | None = None) -> Config:
        inline = check_inline(inline)
        env = os.environ
        problems: list[str] = []
        file_path: Path | str = "~/.cirron/config.toml"
        try:
            file_path = config_file_path()
            from_file = read_config_file(file_path)
        except ConfigFileUnreadable as exc:
            from_file = {}
            problems.append(f"{exc}; going on without it")
        profiling = {}
        if project is not None:
            profiling = {k: v for k, v in project.profiling.model_dump().items() if v is not None}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, (env_name, kind, default) in _FIELDS.items():
            if explicit.get(name) is not None:
                raw, src = explicit[name], "argument"
            elif inline.get(name) is not None:
                raw, src = inline[name], "profile(config=...)"
            elif env.get(env_name):
                raw, src = env[env_name], f"env {env_name}"
            elif name in from_file:
                raw, src = from_file[name], str(file_path)
            elif name in profiling:
                raw, src = profiling[name], str(project_file)
            else:
                values[name], sources[name] = default, "default"
                if kind == "path":
                    values[name] = Path(default)
                continue
            values[name] = _parse(name, kind, raw, src)
            sources[name] = src
        return cls(
            **values,
            sources=sources,
            project_name=getattr(project, "name", None),
            project_version=getattr(project, "version", None),
            framework=getattr(project, "framework", None),
            project_data=dict(getattr(project, "data", {}) or {}),
            project_file=project_file,
            problems=tuple(problems),
        )

    def masked(self) -> dict[str, Any]:
        """Every value with its source; secrets shown as ``abcd…wxyz``."""
        out = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if name in SECRET_FIELDS and value:
                value = value[:4] + "…" + value[-4:] if len(value) > 12 else "****"
            if isinstance(value, Path):
                value = str(value)
            if isinstance(value, tuple):
                value = list(value)
            out[name] = {"value": value, "source": self.sources.get(name, "default")}
        return out
