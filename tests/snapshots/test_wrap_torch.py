from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cirron import Cirron, CirronWrapError  # noqa: E402
from cirron import safetensors_io as st  # noqa: E402
from cirron.spool import load_spool  # noqa: E402


def _tree(spool: Path) -> list[tuple[int, str, dict]]:
    data = load_spool(spool)
    (sess,) = data.sessions
    top, children = sess.tree()
    out = []
    stack = [(s, 0) for s in reversed(top)]
    while stack:
        s, d = stack.pop()
        label = s["name"] + (f"[{s['index']}]" if s.get("index") is not None else "")
        out.append((d, label, s))
        stack.extend((k, d + 1) for k in reversed(children.get(s["id"], [])))
    return out


def _train(c: Cirron, model, opt, epochs: int = 2, batches: int = 2) -> None:
    for _ in c.epochs(range(epochs)):
        for _ in c.batches(range(batches)):
            x = torch.randn(8, 4)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("pass_optimizer", [True, False])
def test_forward_backward_step_nest_under_batch(spool_dir: Path, pass_optimizer: bool) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="full")
    c.profile()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert c.wrap(model, optimizer=opt if pass_optimizer else None) is model
    _train(c, model, opt)
    with torch.no_grad():  # eval forward: no backward span
        model(torch.randn(2, 4))
    c.shutdown()
    tree = _tree(spool_dir)
    labels = [(d, n) for d, n, _ in tree]
    assert labels[:8] == [
        (0, "cirron.session"), (1, "epoch[0]"), (2, "batch[0]"), (3, "data_load"),
        (3, "forward"), (3, "backward"), (3, "optimizer_step"), (2, "batch[1]"),
    ]
    names = [n for _, n, _ in tree]
    assert names.count("forward") == 5 and names.count("backward") == 4 and names.count("optimizer_step") == 4
    for _d, n, s in tree:
        assert s["end_ns"] is not None, n
        if n in ("forward", "backward", "optimizer_step"):
            assert s["gpu_ns"] is None  # CPU run
    # backward covers the parameter gradients: it ends before the optimizer step starts
    fwd, bwd, step = [next(s for _, n, s in tree if n == k) for k in ("forward", "backward", "optimizer_step")]
    assert fwd["end_ns"] <= bwd["start_ns"] <= bwd["end_ns"] <= step["start_ns"]
    # snapshots: weights + grads for both epochs, blobs on disk
    data = load_spool(spool_dir)
    recs = list(data.snapshots.values())
    assert len(recs) == 2 * 8
    assert {r["role"] for r in recs} == {"weight", "gradient"}
    epoch0 = next(s for _, n, s in tree if n == "epoch[0]")
    mine = [r for r in recs if r["span_id"] == epoch0["id"]]
    assert [r["tensor"] for r in mine] == ["0.weight", "0.bias", "2.weight", "2.bias",
                                           "0.weight.grad", "0.bias.grad", "2.weight.grad", "2.bias.grad"]
    w = next(r for r in mine if r["tensor"] == "0.weight")
    assert w["blob_uri"] == f"snapshots/{epoch0['id']}/weights.safetensors" and w["mode"] == "full"
    assert w["stats"]["numel"] == 32 and len(w["stats"]["histogram"]["counts"]) == 16
    h = st.read_header(spool_dir.parent / w["blob_uri"])
    assert h.metadata == {"session_id": c.session_id or h.metadata["session_id"], "span_id": epoch0["id"]}
    g = st.read_header(spool_dir.parent / "snapshots" / epoch0["id"] / "gradients.safetensors")
    assert g.names()[0] == "0.weight.grad"


def test_raising_forward_closes_its_span(spool_dir: Path) -> None:
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise ValueError("bad input")

    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    m = c.wrap(Boom())
    with pytest.raises(ValueError, match="bad input"):
        m(torch.zeros(1))
    with c.scope("after"):
        pass
    c.shutdown()
    tree = _tree(spool_dir)
    fwd = next(s for _, n, s in tree if n == "forward")
    assert fwd["end_ns"] is not None and fwd["attrs"]["error"] == "ValueError: bad input"
    after = next(d for d, n, _ in tree if n == "after")
    assert after == 1  # the context was restored: "after" is not nested under forward


def test_sampled_mode_blob_schedule(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="sampled", sample_rate=0.5)
    c.profile()
    model = c.wrap(torch.nn.Linear(3, 1))
    for _ in c.epochs(range(5)):
        pass
    c.shutdown()
    data = load_spool(spool_dir)
    spans = data.spans
    by_epoch = sorted((spans[r["span_id"]]["index"], r["blob_uri"] is not None) for r in data.snapshots.values())
    assert by_epoch == [(0, True), (0, True), (1, False), (1, False), (2, True), (2, True),
                        (3, False), (3, False), (4, True), (4, True)]
    assert model.weight.grad is None


def test_stats_mode_writes_no_blob(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="stats")
    c.profile()
    model = c.wrap(torch.nn.Linear(3, 1))
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    for _ in c.epochs(range(1)):
        pass
    c.shutdown()
    recs = list(load_spool(spool_dir).snapshots.values())
    assert len(recs) == 2 and all(r["blob_uri"] is None and r["mode"] == "stats" for r in recs)
    w = next(r for r in recs if r["tensor"] == "weight")
    assert w["stats"]["mean"] == "NaN" and w["stats"]["nan_count"] == 1
    assert not (spool_dir.parent / "snapshots").exists()
    raw = next(p for p in spool_dir.iterdir() if p.suffix == ".json").read_text()
    assert "NaN," not in raw.replace('"NaN"', "")  # strict JSON


def test_numpy_dict_snapshots_without_torch_models(spool_dir: Path) -> None:
    import numpy as np

    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="full")
    c.profile()
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert c.wrap(weights, name="linear") is weights
    for _ in c.epochs(range(2)):
        weights["w"] += 1
    c.shutdown()
    data = load_spool(spool_dir)
    recs = sorted(data.snapshots.values(), key=lambda r: data.spans[r["span_id"]]["index"])
    assert [r["tensor"] for r in recs] == ["linear.w", "linear.w"]
    assert [r["stats"]["mean"] for r in recs] == [3.5, 4.5]
    h = st.read_header(spool_dir.parent / recs[1]["blob_uri"])
    assert st.read_values(h, h.get("linear.w"), 0, 6) == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_wrap_is_idempotent_and_rejects_unknown_objects(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    m = torch.nn.Linear(2, 2)
    c.wrap(m)
    c.wrap(m)
    assert len(m._forward_pre_hooks) == 1
    with pytest.raises(CirronWrapError, match="cannot instrument"):
        c.wrap(42)
    with pytest.raises(CirronWrapError, match="class"):
        c.wrap(torch.nn.Linear)
    with pytest.raises(CirronWrapError, match="unknown option"):
        c.wrap(m, bogus=1)
    with pytest.raises(CirronWrapError, match="framework"):
        c.wrap(m, framework="sklearn")


def test_snapshot_work_runs_off_the_training_thread(spool_dir: Path) -> None:
    import threading

    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="full")
    c.profile()
    model = c.wrap(torch.nn.Linear(64, 64))  # registered weakly: keep a reference
    seen: list[str] = []
    real = c._snapshots._finish

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return real(*args, **kwargs)

    c._snapshots._finish = spy
    for _ in c.epochs(range(2)):
        pass
    c.shutdown()  # waits for the pending snapshot work
    assert len(seen) == 2 and all(name.startswith("cirron-snapshot") for name in seen)
    assert len(list((spool_dir.parent / "snapshots").iterdir())) == 2
    assert len(load_spool(spool_dir).snapshots) == 4
    del model


def _stats_setup(spool_dir: Path):
    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="stats")
    c.profile()
    model = torch.nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    c.wrap(model, optimizer=opt)
    model(torch.ones(2, 4)).sum().backward()
    return c, model, opt


def test_stats_mode_reads_in_place_when_the_worker_is_done_first(spool_dir: Path) -> None:
    c, model, opt = _stats_setup(spool_dir)
    before = model.weight.detach().clone()
    for _ in c.epochs(range(1)):
        pass
    c._snapshots._worker.submit(lambda: None).result()  # the worker finished the snapshot
    opt.step()
    c.shutdown()
    recs = {r["tensor"]: r for r in load_spool(spool_dir).snapshots.values()}
    assert recs["weight"]["stats"]["mean"] == pytest.approx(float(before.mean()))
    assert recs["weight.grad"]["stats"]["mean"] == pytest.approx(2.0)  # two rows of ones
    mgr = c._snapshots
    assert mgr.barrier_waits == 0 and mgr.inconsistent == 0
    assert not mgr._staging._free  # nothing was ever copied


def test_a_step_that_comes_first_copies_what_is_left(spool_dir: Path, monkeypatch) -> None:
    import threading

    import cirron.snapshots as snaps

    c, model, opt = _stats_setup(spool_dir)
    before = model.weight.detach().clone()
    release = threading.Event()
    real_stats = snaps._item_stats

    def slow_stats(item, lock=None):
        assert release.wait(30)
        return real_stats(item, lock)

    monkeypatch.setattr(snaps, "_item_stats", slow_stats)
    for _ in c.epochs(range(1)):
        pass
    with torch.no_grad():
        model(torch.ones(1, 4))  # a forward pass changes nothing the worker reads: no wait
    assert c._snapshots.barrier_waits == 0
    opt.step()  # the pre-hook copies the tensors the worker has not read yet, then returns
    assert not torch.equal(model.weight.detach(), before)
    release.set()
    c.shutdown()
    recs = {r["tensor"]: r for r in load_spool(spool_dir).snapshots.values()}
    assert recs["weight"]["stats"]["mean"] == pytest.approx(float(before.mean()))  # the epoch-end values
    mgr = c._snapshots
    assert mgr.barrier_waits == 1 and mgr.inconsistent == 0
    assert mgr._staging._free  # the copy went through the staging pool and came back


def test_one_off_snapshot_function(spool_dir: Path) -> None:
    import numpy as np

    from cirron import CirronStateError
    from cirron.snapshots import snapshot

    c = Cirron(spool_dir=spool_dir, flush_interval=60, snapshots="stats")
    with pytest.raises(CirronStateError):
        snapshot(c, {"w": np.ones(2)})
    c.profile()
    with c.scope("eval"):
        snapshot(c, {"w": np.ones(2, np.float32), "w.grad": torch.zeros(2)}, blobs=True)
    snapshot(c, {"b": np.zeros(1)})  # outside any scope: the session root
    c.shutdown()
    data = load_spool(spool_dir)
    recs = {r["tensor"]: r for r in data.snapshots.values()}
    assert data.spans[recs["w"]["span_id"]]["name"] == "eval"
    assert recs["w.grad"]["role"] == "gradient" and recs["w"]["blob_uri"].endswith("weights.safetensors")
    assert recs["w.grad"]["blob_uri"].endswith("gradients.safetensors")
    assert data.spans[recs["b"]["span_id"]]["name"] == "cirron.session" and recs["b"]["blob_uri"] is None


def test_staging_is_warmed_up_when_the_mode_is_known(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    model = c.wrap(torch.nn.Linear(8, 8))        # mode not decided yet (default stats)
    mgr = c._snapshots
    assert mgr._unwarmed and not mgr._staging._free
    c.profile(snapshots="full")
    model(torch.zeros(1, 8))                      # first forward after profile(): warm-up on the worker
    mgr._worker.submit(lambda: None).result()
    assert not mgr._unwarmed and mgr._staging._free
    free = mgr._staging._free[(torch.float32, False)][0]
    assert free.numel() == 2 * (64 + 8)           # weights + room for their gradients
    c.shutdown()


def test_gpu_time_is_resolved_later_without_blocking(spool_dir: Path, monkeypatch) -> None:
    from device_fake import FakeDevice

    import cirron._wrap as w
    from cirron._device import use_backend

    monkeypatch.setattr(w._TorchHooks, "_cuda", lambda self: True)
    dev = FakeDevice(elapsed_ns=1234)
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    tracker = use_backend(c, dev)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    c.wrap(model, optimizer=opt)
    with c.scope("batch"):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        with c.scope("after"):  # the forward span left the context although it is not complete
            pass
    assert len(tracker._pending) == 3  # forward, backward, optimizer_step wait for their end events
    dev.finish()
    model(torch.ones(1, 2))          # the next forward's pre-hook completes them, no waiting
    assert not tracker._pending
    dev.finished = False
    model(torch.ones(1, 2))          # left pending: the flush waits for it
    c.shutdown()
    tree = {n: (d, s) for d, n, s in _tree(spool_dir) if n != "forward"}
    fwds = [s for _, n, s in _tree(spool_dir) if n == "forward"]
    assert len(fwds) == 3 and all(s["gpu_ns"] == 1234 and s["end_ns"] for s in fwds)
    assert tree["backward"][1]["gpu_ns"] == 1234 and tree["optimizer_step"][1]["gpu_ns"] == 1234
    assert all(s["memory_peak_bytes"] is not None for s in fwds)
    assert tree["after"][0] == 2  # a child of batch, not of forward
    assert fwds[0]["end_ns"] <= tree["after"][1]["start_ns"]  # end time taken when the hook ran


def test_a_failed_backward_does_not_stop_later_backward_spans(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    model = c.wrap(torch.nn.Linear(2, 1), snapshot=False)

    def boom(grad):
        raise RuntimeError("hook failed")

    handle = model.weight.register_hook(boom)  # fires inside the pass, after the span opened
    with pytest.raises(RuntimeError, match="hook failed"):
        model(torch.ones(1, 2)).sum().backward()
    handle.remove()
    model(torch.ones(1, 2)).sum().backward()
    c.shutdown()
    bws = [s for _, n, s in _tree(spool_dir) if n == "backward"]
    assert len(bws) == 2 and all(s["end_ns"] is not None for s in bws)
    assert bws[0]["attrs"]["error"] == "backward pass did not complete"
    assert not (bws[1]["attrs"] or {}).get("error")
