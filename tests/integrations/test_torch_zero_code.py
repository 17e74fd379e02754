"""Zero-code PyTorch: global hooks give epoch/step/forward/backward/optimizer_step with no wrapping."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, TensorDataset

from cirron import Cirron


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def _loader(n: int = 8, batch: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=batch)


def _train(model, loader, epochs: int = 2, opt=None) -> None:
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.MSELoss()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()


def _shape(node: dict) -> list:
    return [f"{node['name']}[{node['index']}]" if node["index"] is not None else node["name"],
            [_shape(ch) for ch in node["children"]]]


def _names(node: dict) -> list[str]:
    return [node["name"]] + [n for ch in node["children"] for n in _names(ch)]


STEP = ["data_load", "forward", "backward", "optimizer_step"]


def test_a_plain_loop_gets_epochs_steps_and_loss_marks(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    _train(_model(), _loader())
    d = c.trace(format="dict")
    c.shutdown()
    assert [_shape(r) for r in d["roots"]] == [
        [f"epoch[{e}]", [[f"step[{s}]", [[n, []] for n in STEP]] for s in range(2)]] for e in range(2)
    ]
    step = d["roots"][0]["children"][0]
    assert step["children"][1]["attrs"]["module"] == "Sequential"
    assert step["children"][0]["attrs"]["data_load_ns"] > 0
    assert [m["name"] for m in step["marks"]] == ["loss"] and isinstance(step["marks"][0]["value"], float)


def test_autodetected_when_torch_is_imported_and_not_with_an_empty_list(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile()
    assert list(c._integrations.handles) == ["torch"] or "torch" in c._integrations.handles
    c.shutdown()
    c2 = Cirron(spool_dir=spool_dir, output="none")
    c2.profile(frameworks=[])
    _train(_model(), _loader(), epochs=1)
    assert c2.trace(format="dict")["span_count"] == 0
    c2.shutdown()


def test_nested_inside_the_users_epochs_and_batches_without_doubling(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    model, loader = _model(), _loader()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in c.epochs(range(2)):
        for x, y in c.batches(loader):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    d = c.trace(format="dict")
    c.shutdown()
    assert [_shape(r) for r in d["roots"]] == [
        [f"epoch[{e}]", [[f"batch[{s}]", [[n, []] for n in STEP]] for s in range(2)]] for e in range(2)
    ]


def test_implicit_steps_inside_the_users_epochs(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    model, loader = _model(), _loader()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in c.epochs(range(1)):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    d = c.trace(format="dict")
    c.shutdown()
    assert [_shape(r) for r in d["roots"]] == [["epoch[0]", [[f"step[{s}]", [[n, []] for n in STEP]] for s in range(2)]]]


def test_a_wrapped_model_is_not_counted_twice(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    model = c.wrap(_model(), snapshot=False)
    _train(model, _loader(), epochs=1)
    d = c.trace(format="dict")
    c.shutdown()
    names = [n for r in d["roots"] for n in _names(r)]
    assert names.count("forward") == 2 and names.count("backward") == 2 and names.count("optimizer_step") == 2


def test_only_the_first_loader_opens_epochs(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    model, train, val = _model(), _loader(), _loader(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for x, y in train:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            for x, _y in val:
                model(x)
    d = c.trace(format="dict")
    c.shutdown()
    assert [r["name"] for r in d["roots"]] == ["epoch", "epoch"]
    # the validation batch is a step of its own in the same epoch: data_load + forward, no backward
    assert _shape(d["roots"][0]["children"][-1]) == ["step[2]", [["data_load", []], ["forward", []]]]


def test_a_raising_forward_closes_its_span_and_later_calls_still_count(spool_dir) -> None:
    class Boom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

        def forward(self, x):
            self.inner(x)
            raise ValueError("bad input")

    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    with pytest.raises(ValueError, match="bad input"):
        Boom()(torch.ones(1, 2))
    torch.nn.Linear(2, 2)(torch.ones(1, 2))
    d = c.trace(format="dict")
    c.shutdown()
    assert [(r["name"], r["attrs"].get("error"), r["attrs"]["module"]) for r in d["roots"]] == [
        ("forward", "ValueError: bad input", "Boom"), ("forward", None, "Linear")]


def test_shutdown_restores_torch_exactly(spool_dir) -> None:
    from torch.nn.modules import module as mod
    from torch.optim import optimizer as optmod

    def state() -> tuple:
        return (dict(mod._global_forward_pre_hooks), dict(mod._global_forward_hooks),
                dict(mod._global_forward_hooks_always_called), dict(optmod._global_optimizer_pre_hooks),
                dict(optmod._global_optimizer_post_hooks), DataLoader.__dict__["__iter__"])

    before = state()
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    assert state() != before
    _train(_model(), _loader(), epochs=1)
    c.shutdown()
    assert state() == before
    loader = _loader()
    assert type(iter(loader)).__module__.startswith("torch.")  # no cirron iterator left behind


def test_shutdown_closes_the_open_epoch_in_the_spool(spool_dir) -> None:
    import json

    c = Cirron(spool_dir=spool_dir)
    c.profile(frameworks=["torch"])
    _train(_model(), _loader(), epochs=1)
    c.shutdown()
    spans = {}
    for f in spool_dir.glob("*.json"):
        for s in json.loads(f.read_text())["spans"]:
            if s["end_ns"] is not None or s["id"] not in spans:
                spans[s["id"]] = s
    by_name = {}
    for s in spans.values():
        by_name.setdefault(s["name"], []).append(s)
    assert len(by_name["epoch"]) == 1 and by_name["epoch"][0]["end_ns"] is not None
    assert all(s["end_ns"] is not None for s in by_name["step"])


def test_sessions_stopping_in_any_order_leave_torch_as_it_was(spool_dir) -> None:  # noqa: ANN001
    before = DataLoader.__dict__["__iter__"]
    a = Cirron(spool_dir=spool_dir, output="none")
    b = Cirron(spool_dir=spool_dir, output="none")
    a.profile(frameworks=["torch"])
    b.profile(frameworks=["torch"])
    _train(_model(), _loader(), epochs=1)
    a.shutdown()                      # the first one in leaves first
    assert DataLoader.__dict__["__iter__"] is not before
    _train(_model(), _loader(), epochs=1)
    db = b.trace(format="dict")
    b.shutdown()
    assert DataLoader.__dict__["__iter__"] is before
    assert [r["name"] for r in db["roots"]] == ["epoch", "epoch"]  # b saw both runs


def test_no_automatic_loss_mark_inside_the_users_batches(spool_dir) -> None:
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    model, loader = _model(), _loader()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.MSELoss()
    for _ in c.epochs(range(1)):
        for x, y in c.batches(loader):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            c.mark("loss", loss.item())
    d = c.trace(format="dict")
    c.shutdown()
    batches = d["roots"][0]["children"]
    assert len(batches) == 2
    assert all([m["name"] for m in b["marks"]] == ["loss"] for b in batches)
