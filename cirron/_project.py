"""The project file: ``cirron.yaml`` → ``cirron.yml`` → ``cirron.json``, searched upward from the cwd.

Validated with pydantic (imported only when a project file exists). Unknown sections are kept
(``extra="allow"``) because the same file also feeds the CLI and the platform.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cirron._errors import CirronConfigError

PROJECT_FILE_NAMES = ("cirron.yaml", "cirron.yml", "cirron.json")
FRAMEWORKS = ("pytorch", "tensorflow", "sklearn", "onnx")
PROJECT_TYPES = ("classification", "regression", "time-series", "embedding", "computer-vision")
SNAPSHOT_MODES = ("off", "stats", "sampled", "full")


def find_project_file(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        for name in PROJECT_FILE_NAMES:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def _model():  # noqa: ANN202 - built lazily so `import cirron` never imports pydantic
    from typing import Literal

    from pydantic import AliasChoices, BaseModel, ConfigDict, Field

    class Profiling(BaseModel):
        model_config = ConfigDict(extra="allow")
        snapshots: Literal[SNAPSHOT_MODES] | None = None
        sample_rate: float | None = Field(default=None, gt=0)
        flush_interval: float | None = Field(default=None, gt=0)
        enabled: bool | None = None
        frameworks: list[str] | None = None
        gpu: bool | None = None

    class Project(BaseModel):
        model_config = ConfigDict(extra="allow", populate_by_name=True)
        name: str
        version: str
        framework: Literal[FRAMEWORKS]
        type: Literal[PROJECT_TYPES]
        description: str | None = None
        profiling: Profiling = Field(default_factory=Profiling)
        serving_config: dict[str, Any] | None = Field(
            default=None, validation_alias=AliasChoices("servingConfig", "serving_config")
        )
        env: dict[str, Any] = Field(default_factory=dict)
        secrets: list[str] = Field(default_factory=list)
        data: dict[str, Any] = Field(default_factory=dict)

    return Project


def load_project(path: Path) -> Any:
    """Parse and validate a project file; any problem is one CirronConfigError naming file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CirronConfigError(f"{path}: cannot read project file: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - YAML and JSON both have several error types
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise CirronConfigError(f"{path}: not valid {kind}{where}: {first}") from None
    if not isinstance(raw, dict):
        raise CirronConfigError(f"{path}: the top level must be a mapping, not {type(raw).__name__}")
    from pydantic import ValidationError

    try:
        return _model().model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise CirronConfigError(f"{path}: field '{field}': {err['msg']}") from None


#: Set to skip the project file lookup (tests, tools that must ignore the cwd's project).
ENV_NO_PROJECT_FILE = "CIRRON_NO_PROJECT_FILE"


def project_from_cwd(path: str | os.PathLike[str] | None = None) -> tuple[Any | None, Path | None]:
    """The validated project at ``path`` (``profile(path=...)``), else the one found from the
    working directory upward, and its path."""
    if path is not None:
        chosen = Path(path)
        if not chosen.is_file():
            raise CirronConfigError(f"{chosen}: project file not found (profile(path=...))")
        return load_project(chosen), chosen
    if os.environ.get(ENV_NO_PROJECT_FILE):
        return None, None
    path = find_project_file()
    return (load_project(path), path) if path else (None, None)
