from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from cirron import Cirron, CirronWrapError
from cirron.spool import load_spool

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def _tree(spool: Path) -> list[tuple[int, str, dict]]:
    data = load_spool(spool)
    (sess,) = data.sessions
    top, children = sess.tree()
    out, stack = [], [(s, 0) for s in reversed(top)]
    while stack:
        s, d = stack.pop()
        out.append((d, s["name"], s.get("attrs") or {}))
        stack.extend((k, d + 1) for k in reversed(children.get(s["id"], [])))
    return out


@pytest.fixture
def c(spool_dir: Path):
    inst = Cirron(spool_dir=spool_dir, flush_interval=60)
    inst.profile()
    yield inst
    inst.shutdown()


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    return X, (X[:, 0] > 0).astype(int)


def test_pipeline_steps_nest_like_the_reference_view(c: Cirron, spool_dir: Path) -> None:
    X, y = _data()
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])
    assert c.wrap(pipe) is pipe
    pipe.fit(X, y)
    pipe.predict(X)
    pipe.predict_proba(X)
    c.shutdown()
    got = [(d, n, a.get("estimator")) for d, n, a in _tree(spool_dir)]
    assert got == [
        (0, "cirron.session", None),
        (1, "fit", "Pipeline"),
        (2, "fit_transform", "StandardScaler"),
        (2, "fit", "LogisticRegression"),
        (1, "predict", "Pipeline"),
        (2, "transform", "StandardScaler"),
        (2, "predict", "LogisticRegression"),
        (1, "predict_proba", "Pipeline"),
        (2, "transform", "StandardScaler"),
        (2, "predict_proba", "LogisticRegression"),
    ]


def test_instrumented_estimators_keep_their_identity(c: Cirron) -> None:
    X, y = _data()
    reg = LinearRegression()
    c.wrap(reg)
    assert type(reg).__name__ == "LinearRegression" and isinstance(reg, LinearRegression)
    assert not hasattr(reg, "predict_proba")  # hasattr answers as before
    pipe = c.wrap(Pipeline([("s", StandardScaler()), ("r", LinearRegression())]))
    assert not hasattr(pipe, "predict_proba")
    reg.fit(X, y)
    back = pickle.loads(pickle.dumps(reg))
    assert type(back) is LinearRegression  # pickles as the original class
    np.testing.assert_allclose(back.predict(X), reg.predict(X))
    assert repr(reg) == "LinearRegression()"
    from sklearn.base import clone

    assert type(clone(reg)).__name__ == "LinearRegression"
    c.wrap(reg)  # idempotent
    assert type(reg).__mro__[1] is LinearRegression


def test_any_callable_and_onnx_session(c: Cirron, spool_dir: Path, monkeypatch) -> None:
    def preprocess(x):
        return x + 1

    wrapped = c.wrap(preprocess)
    assert wrapped(1) == 2 and wrapped.__name__ == "preprocess"

    class Tokenizer:
        def __call__(self, s):
            return s.split()

    tok = c.wrap(Tokenizer(), name="tokenize")
    assert tok("a b") == ["a", "b"]

    fake_ort = types.ModuleType("onnxruntime")

    class InferenceSession:
        def run(self, outputs, feeds):
            return [feeds["x"] * 2]

    InferenceSession.__module__ = "onnxruntime"
    fake_ort.InferenceSession = InferenceSession
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_ort)
    sess = InferenceSession()
    assert c.wrap(sess, name="model.onnx") is sess
    assert sess.run(None, {"x": 3}) == [6]
    c.shutdown()
    got = [(n, a) for _, n, a in _tree(spool_dir)][1:]
    assert got == [("preprocess", {}), ("tokenize", {}), ("run", {"model": "model.onnx"})]


def test_framework_setting_narrows_detection(spool_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "cirron.yaml").write_text("name: demo\nversion: '1'\nframework: pytorch\ntype: classification\n")
    c = Cirron(spool_dir=spool_dir)
    assert c.config.framework == "pytorch"
    with pytest.raises(CirronWrapError, match="framework='sklearn'"):
        c.wrap(StandardScaler())
    scaler = c.wrap(StandardScaler(), framework="sklearn")
    assert type(scaler).__mro__[1] is StandardScaler
