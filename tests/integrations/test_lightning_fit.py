"""Lightning: one line gives epoch/step/forward/backward/optimizer_step, loss and logged metrics."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
from integration_trees import find, marks, shape  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from cirron import Cirron  # noqa: E402

pytestmark = pytest.mark.slow


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)), batch_size=4)


def _trainer(tmp_path, callbacks=None):  # noqa: ANN001, ANN202
    return pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path), callbacks=callbacks)


def test_lightning_run_with_one_line(tmp_path, spool_dir) -> None:  # noqa: ANN001
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["lightning", "torch"])
    torch.manual_seed(0)
    _trainer(tmp_path).fit(Tiny(), _data(), _data())
    d = c.trace(format="dict")
    c.shutdown()
    roots = d["roots"]
    epochs = find(roots, "epoch")
    assert [e["index"] for e in epochs] == [0, 1] and epochs[0]["attrs"].get("framework") == "lightning", \
        [shape(r) for r in roots]
    for e in epochs:
        steps = [s for s in e["children"] if s["name"] == "step"]
        assert [s["index"] for s in steps] == [0, 1]
        for s in steps:
            # Lightning runs forward and backward in the optimizer's closure: still siblings of the update
            assert [ch["name"] for ch in s["children"]] == ["forward", "backward", "optimizer_step"], shape(s)
    assert len(marks(roots, "loss")) == 4
    evals = find(roots, "evaluate")
    assert len(evals) == 2 and "val_loss" in [m["name"] for m in evals[0]["marks"]]
    assert "train_loss" in [m["name"] for m in epochs[0]["marks"]]


def test_callback_by_hand_and_trainer_restored(tmp_path, spool_dir) -> None:  # noqa: ANN001
    from cirron.integrations.lightning import CirronCallback

    init = pl.Trainer.__dict__["__init__"]
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["lightning"])
    assert pl.Trainer.__dict__["__init__"] is not init
    c.shutdown()
    assert pl.Trainer.__dict__["__init__"] is init
    c2 = Cirron(spool_dir=spool_dir, output="none")
    c2.profile(frameworks=[])
    _trainer(tmp_path, callbacks=[CirronCallback(c2)]).fit(Tiny(), _data())
    d = c2.trace(format="dict")
    c2.shutdown()
    assert len(find(d["roots"], "epoch")) == 2 and len(find(d["roots"], "step")) == 4


def test_two_sessions_each_get_their_callback(tmp_path, spool_dir) -> None:  # noqa: ANN001
    from cirron.integrations.lightning import CirronCallback

    c1, c2 = Cirron(spool_dir=spool_dir, output="none"), Cirron(spool_dir=spool_dir, output="none")
    c1.profile(frameworks=["lightning"])
    c2.profile(frameworks=["lightning"])
    try:
        mine = [cb.spans.c for cb in _trainer(tmp_path).callbacks
                if isinstance(cb, CirronCallback) and cb.spans.c in (c1, c2)]
        assert sorted(map(id, mine)) == sorted(map(id, (c1, c2)))
    finally:
        c2.shutdown()
        c1.shutdown()
