"""The build hook never fails an install: without a way to compile, the pure-Python twins ship."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hatchling")

ROOT = Path(__file__).resolve().parents[2]


def _hook_module() -> Any:
    spec = importlib.util.spec_from_file_location("cirron_hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class _App:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def display_warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def display_info(self, msg: str) -> None:
        self.infos.append(msg)


def _run_hook(mod: Any, tmp_path: Path) -> tuple[_App, dict[str, Any]]:
    hook = mod.NativeBuildHook.__new__(mod.NativeBuildHook)
    app = _App()
    type(hook).app = property(lambda self: app)  # type: ignore[method-assign]
    type(hook).root = property(lambda self: str(tmp_path))  # type: ignore[method-assign]
    type(hook).target_name = property(lambda self: "wheel")  # type: ignore[method-assign]
    build_data: dict[str, Any] = {"force_include": {}}
    hook.initialize("1.0", build_data)
    return app, build_data


def test_no_ldshared_falls_back_to_pure_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mod = _hook_module()
    real = sysconfig.get_config_var
    monkeypatch.setattr(mod.sysconfig, "get_config_var", lambda name: None if name == "LDSHARED" else real(name))
    monkeypatch.delenv("CIRRON_PURE_PYTHON", raising=False)
    app, build_data = _run_hook(mod, tmp_path)
    assert len(app.warnings) == len(mod.EXTENSIONS)
    assert all("no LDSHARED" in w and "pure-Python version will run" in w for w in app.warnings)
    assert "pure_python" not in build_data and build_data["force_include"] == {}


def test_free_threaded_build_compiles_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mod = _hook_module()
    real = sysconfig.get_config_var
    monkeypatch.setattr(mod.sysconfig, "get_config_var", lambda name: 1 if name == "Py_GIL_DISABLED" else real(name))
    monkeypatch.delenv("CIRRON_PURE_PYTHON", raising=False)
    calls: list[Any] = []
    monkeypatch.setattr(mod.subprocess, "run", lambda *a, **k: calls.append(a))
    app, build_data = _run_hook(mod, tmp_path)
    assert calls == [] and app.warnings == [] and any("free-threaded" in m for m in app.infos)
    assert "pure_python" not in build_data
