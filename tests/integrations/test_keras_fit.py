"""Keras 3 on its torch backend (no TensorFlow): epoch/step/forward/backward/optimizer_step, loss marks."""

from __future__ import annotations

import os
import sys

import pytest

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")
np = pytest.importorskip("numpy")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend", allow_module_level=True)
from integration_trees import find, marks, names, shape  # noqa: E402

from cirron import Cirron  # noqa: E402

pytestmark = pytest.mark.slow


def _model():  # noqa: ANN202
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _data() -> tuple:
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")


def test_keras_fit_with_one_line(spool_dir) -> None:  # noqa: ANN001
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["keras", "torch"])
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y))
    d = c.trace(format="dict")
    c.shutdown()
    roots = d["roots"]
    epochs = find(roots, "epoch")
    assert [e["index"] for e in epochs] == [0, 1] and epochs[0]["attrs"]["framework"] == "keras"
    for e in epochs:
        steps = [s for s in e["children"] if s["name"] == "step"]
        assert [s["index"] for s in steps] == [0, 1]
        for s in steps:
            assert [ch["name"] for ch in s["children"]] == ["forward", "backward", "optimizer_step"], shape(s)
    assert len(marks(roots, "loss")) >= 4
    assert "val_loss" in [m["name"] for m in epochs[0]["marks"]]
    assert len(find(roots, "evaluate")) == 2
    # fit's wrappers are gone afterwards: the model's methods are the class's again
    assert "train_step" not in model.__dict__ and "apply" not in model.optimizer.__dict__


def test_keras_restored_and_callback_by_hand(spool_dir) -> None:  # noqa: ANN001
    from cirron.integrations.keras import CirronCallback

    before = dict(keras.Model.__dict__)
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["keras"])
    assert keras.Model.__dict__.get("fit") is not before.get("fit")
    c.shutdown()
    assert dict(keras.Model.__dict__) == before
    c2 = Cirron(spool_dir=spool_dir, output="none")
    c2.profile(frameworks=[])
    x, y = _data()
    _model().fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[CirronCallback(c2)])
    d = c2.trace(format="dict")
    c2.shutdown()
    assert len(find(d["roots"], "epoch")) == 1 and len(find(d["roots"], "step")) == 2
    assert len(find(d["roots"], "optimizer_step")) == 2 and not find(d["roots"], "forward")


def test_callback_by_hand_with_torch_on_counts_only_trained_epochs(spool_dir) -> None:  # noqa: ANN001
    from cirron.integrations.keras import CirronCallback

    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])  # keras's fit is not patched: Keras reads a batch before the callback runs
    x, y = _data()
    _model().fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[CirronCallback(c)])
    d = c.trace(format="dict")
    c.shutdown()
    roots = d["roots"]
    assert [e["index"] for e in find(roots, "epoch")] == [0, 1], [shape(r) for r in roots]
    assert len(find(roots, "step")) == 4 and len(find(roots, "optimizer_step")) == 4
    setup = [r for r in roots if r["name"] == "setup"]  # the batch Keras read to build the model
    assert len(setup) == 1 and "data_load" in names(setup[0])

