"""profile(enabled/frameworks/config/path), CIRRON_ENABLED, scope(index=), watch(), deps()."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cirron as ci
from cirron import Cirron, CirronConfigError, CirronDependencyError
from cirron._native import PURE_PYTHON_ENV
from cirron.spool import load_spool


def _spans(spool_dir: Path) -> list[dict]:
    out = []
    for f in sorted(spool_dir.glob("*.json")):
        out.extend(json.loads(f.read_text())["spans"])
    return out


def test_enabled_false_records_and_writes_nothing(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir)
    assert c.profile(enabled=False) is c
    assert not c.running and c._integrations is None
    with c.scope("work", x=1) as s:
        c.mark("loss", 1.0)
    assert s.span is None
    assert list(c.epochs([1, 2])) == [1, 2] and list(c.batches("ab")) == ["a", "b"]

    @c.scope("decorated")
    def f() -> int:
        return 3

    @c.inference
    def answer() -> dict:
        return {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}

    assert f() == 3 and answer() == {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    assert c.trace(format="dict") == {"roots": [], "span_count": 0}
    assert c.health()["marks_recorded"] == 0
    assert not spool_dir.exists()
    c.profile()  # enabled again: records
    with c.scope("later"):
        pass
    c.shutdown()
    assert [s["name"] for s in _spans(spool_dir) if s["name"] != "cirron.session"] == ["later"]


def test_cirron_enabled_0_in_env(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_ENABLED", "0")
    c = Cirron(spool_dir=spool_dir)
    c.mark("before", 1)  # off from construction, before any profile()
    c.profile()
    assert not c.running
    with c.scope("x"):
        pass
    assert c.trace(format="dict")["span_count"] == 0 and c.health()["marks_recorded"] == 0
    c.shutdown()
    assert not spool_dir.exists()
    assert c.config.sources["enabled"] == "env CIRRON_ENABLED"


def test_cirron_enabled_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_ENABLED", "maybe")
    with pytest.raises(CirronConfigError, match="CIRRON_ENABLED"):
        Cirron().profile()


def test_inline_config_ranks_below_arguments_above_env(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_FLUSH_INTERVAL", "7")
    monkeypatch.setenv("CIRRON_SAMPLE_RATE", "0.3")
    c = Cirron(spool_dir=spool_dir)
    c.profile(output="none", flush_interval=3, config={"flush_interval": 9, "snapshots": "off", "sample_rate": 0.5})
    cfg = c.config
    assert cfg.flush_interval == 3 and cfg.sources["flush_interval"] == "argument"
    assert cfg.sample_rate == 0.5 and cfg.sources["sample_rate"] == "profile(config=...)"
    assert cfg.snapshots == "off"
    c.shutdown()


def test_inline_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(CirronConfigError, match=r"unknown key.*sampel_rate"):
        Cirron().profile(config={"sampel_rate": 0.1})
    with pytest.raises(CirronConfigError, match="flush_interval"):
        Cirron().profile(config={"flush_interval": -1})
    with pytest.raises(CirronConfigError, match="dict"):
        Cirron().profile(config=["snapshots"])  # type: ignore[arg-type]


def test_path_names_the_project_file(tmp_path: Path, spool_dir: Path) -> None:
    other = tmp_path / "elsewhere" / "proj.yaml"
    other.parent.mkdir()
    other.write_text("name: chosen\nversion: '2'\nframework: pytorch\ntype: regression\n"
                     "profiling:\n  flush_interval: 4\n")
    (tmp_path / "cirron.yaml").write_text("name: found\nversion: '1'\nframework: pytorch\ntype: regression\n")
    c = Cirron(spool_dir=spool_dir)
    c.profile(output="none", path=other)
    assert c.config.project_name == "chosen" and c.config.flush_interval == 4
    c.shutdown()
    with pytest.raises(CirronConfigError, match="not found"):
        Cirron().profile(path=tmp_path / "missing.yaml")


def test_frameworks_are_checked_and_installed_only_when_named(spool_dir: Path) -> None:
    with pytest.raises(CirronConfigError, match="unknown integration 'jax'"):
        Cirron(spool_dir=spool_dir).profile(output="none", frameworks=["jax"])
    c = Cirron(spool_dir=spool_dir)
    c.profile(output="none", frameworks=[])
    assert c._integrations is not None and c._integrations.handles == {}
    c.shutdown()


_INDEX_CODE = r"""
import json, cirron as ci
from cirron._record.span import COMPILED
c = ci.Cirron(output="none")
with c.scope("step", index=3, lr=0.1) as s:
    pass
with c.scope("plain"):
    pass
d = c.trace(format="dict")
print(json.dumps({"compiled": COMPILED, "roots": [[r["name"], r["index"], r["attrs"]] for r in d["roots"]]}))
"""


@pytest.mark.parametrize("pure", [False, True])
def test_scope_index_is_the_span_index_in_both_twins(pure: bool) -> None:
    env = dict(os.environ)
    env.pop(PURE_PYTHON_ENV, None)
    if pure:
        env[PURE_PYTHON_ENV] = "1"
    proc = subprocess.run([sys.executable, "-c", _INDEX_CODE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    from cirron._record.span import COMPILED

    assert out["compiled"] == (COMPILED and not pure)
    assert out["roots"] == [["step", 3, {"lr": 0.1}], ["plain", None, {}]]


def test_scope_index_reaches_the_spool(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir)
    c.profile()
    with c.scope("step", index=7):
        pass
    c.shutdown()
    (step,) = [s for s in _spans(spool_dir) if s["name"] == "step"]
    assert step["index"] == 7 and "index" not in (step["attrs"] or {})


def test_watch_registers_weakly_and_returns_the_model(spool_dir: Path) -> None:
    np = pytest.importorskip("numpy")

    class Model:
        def named_parameters(self):
            return [("w", np.ones((2, 2), dtype=np.float32))]

    c = Cirron(spool_dir=spool_dir)
    c.profile(snapshots="stats")
    m = Model()
    assert c.watch(m) is m
    for _ in c.epochs(range(1)):
        pass
    c.flush()
    snaps = [s for sess in load_spool(spool_dir).sessions for s in sess.snapshots]
    assert [s["tensor"] for s in snaps] == ["w"]
    import weakref

    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None  # held weakly
    c.shutdown()


def test_deps_reports_versions_without_importing() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys, cirron as ci; d = ci.deps(); "
                           "print(d['torch'] is not None, 'torch' in sys.modules, d['pandas'] is not None)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "False", "True"], proc.stderr
    assert ci.deps("numpy", "pytorch") == {"numpy": ci.deps("numpy")["numpy"], "pytorch": ci.deps("torch")["torch"]}


def test_deps_names_every_missing_package() -> None:
    with pytest.raises(CirronDependencyError) as info:
        ci.deps("numpy", "no_such_pkg_a", "no_such_pkg_b")
    msg = str(info.value)
    assert "no_such_pkg_a, no_such_pkg_b" in msg and "pip install no_such_pkg_a no_such_pkg_b" in msg
    assert isinstance(info.value, ImportError)
