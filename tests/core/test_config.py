"""Config resolution order, project files, ci.env() and ci.secret()."""

from __future__ import annotations

from pathlib import Path

import pytest

import cirron as ci
from cirron import Cirron, CirronConfigError, CirronSecretNotFound


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home-config.toml").write_text('flush_interval = 3.0\nspool_dir = "from-file"\napi_key = "k-file"\n')
    monkeypatch.setenv("CIRRON_FLUSH_INTERVAL", "2.0")
    (tmp_path / "cirron.yaml").write_text(
        "name: m\nversion: '1'\nframework: sklearn\ntype: regression\n"
        "profiling:\n  sample_rate: 0.5\n  flush_interval: 9\n"
    )
    cfg = Cirron(flush_interval=1.5).config
    assert cfg.flush_interval == 1.5 and cfg.sources["flush_interval"] == "argument"
    cfg = Cirron().config
    assert cfg.flush_interval == 2.0 and cfg.sources["flush_interval"] == "env CIRRON_FLUSH_INTERVAL"
    assert cfg.spool_dir == Path("from-file") and cfg.sources["spool_dir"].endswith("home-config.toml")
    assert cfg.sample_rate == 0.5 and cfg.sources["sample_rate"].endswith("cirron.yaml")
    assert cfg.snapshots == "stats" and cfg.sources["snapshots"] == "default"
    assert cfg.project_name == "m" and cfg.framework == "sklearn"
    assert cfg.masked()["api_key"]["value"] == "****"


@pytest.mark.parametrize("env,value", [("CIRRON_FLUSH_INTERVAL", "soon"), ("CIRRON_OUTPUT", "spool,kafka"),
                                       ("CIRRON_SNAPSHOTS", "sometimes")])
def test_bad_env_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(CirronConfigError, match=env):
        Cirron()


def test_malformed_project_file_errors_at_profile_not_import(tmp_path: Path) -> None:
    (tmp_path / "cirron.yaml").write_text("name: m\nversion: '1'\nframework: keras\ntype: regression\n")
    import importlib

    importlib.reload(ci)  # importing never reads the project file
    with pytest.raises(CirronConfigError, match=r"cirron.yaml: field 'framework'"):
        ci.profile()
    assert not ci.default().running
    (tmp_path / "cirron.yaml").write_text("name: [unclosed\n")
    with pytest.raises(CirronConfigError, match=r"cirron.yaml: not valid YAML"):
        Cirron()


def test_project_file_lookup_order_and_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cirron.json").write_text('{"name": "j", "version": "1", "framework": "onnx", "type": "embedding"}')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert Cirron().config.project_name == "j"  # found by walking upward
    (tmp_path / "cirron.yml").write_text(
        "name: y\nversion: '2'\nframework: pytorch\ntype: regression\nserving_config: {runtime: x}\nbuild: {x: 1}\n"
    )
    assert Cirron().config.project_name == "y"  # .yml wins over .json; unknown sections allowed


def test_session_root_carries_project(tmp_path: Path) -> None:
    import json

    (tmp_path / "cirron.yaml").write_text("name: resnet\nversion: '1.0'\nframework: pytorch\ntype: computer-vision\n")
    c = Cirron()
    c.profile()
    c.shutdown()
    batch = json.loads(next((tmp_path / ".cirron" / "spool").glob("*.json")).read_text())
    assert batch["resource"]["project"] == "resnet" and batch["resource"]["project_version"] == "1.0"
    root = next(s for s in batch["spans"] if s["name"] == "cirron.session")
    assert root["attrs"]["project"] == "resnet" and root["attrs"]["sdk_version"] == ci.__version__


def test_env_parses_json_only_for_objects_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIG", '{"threshold": 0.7, "capture": true}')
    monkeypatch.setenv("LIST", "[1, 2]")
    monkeypatch.setenv("NUM", "123")
    monkeypatch.setenv("BROKEN", "{not json")
    assert ci.env("CONFIG") == {"threshold": 0.7, "capture": True}
    assert ci.env("LIST") == [1, 2]
    assert ci.env("NUM") == "123"
    assert ci.env("BROKEN") == "{not json"
    assert ci.env("MISSING", "dflt") == "dflt" and ci.env("MISSING") is None


def test_secret_from_env_then_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cirron._env import secret

    monkeypatch.setenv("CIRRON_SECRET_HF_TOKEN", "from-env")
    assert ci.secret("hf-token") == "from-env"
    (tmp_path / "db-pass").write_text("s3cret\n")
    assert secret("db-pass", mount=tmp_path) == "s3cret"
    with pytest.raises(CirronSecretNotFound, match="CIRRON_SECRET_NOPE"):
        ci.secret("nope")
    with pytest.raises(KeyError):
        ci.secret("nope")
