"""Hugging Face Trainer: one line gives epoch/step/forward/backward/optimizer_step and metric marks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from integration_trees import find, marks, names, shape  # noqa: E402

from cirron import Cirron  # noqa: E402

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callbacks=None):  # noqa: ANN001, ANN202
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(cfg)
    data = [{"input_ids": torch.randint(0, 32, (8,)), "labels": torch.tensor(i % 2)} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, logging_steps=1, report_to=[], save_strategy="no",
                             eval_strategy="epoch", use_cpu=True, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:4], callbacks=callbacks)


def test_trainer_run_with_one_line(tmp_path, spool_dir) -> None:  # noqa: ANN001
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["transformers", "torch"], snapshots="stats")
    trainer = _trainer(tmp_path)
    trainer.train()
    d = c.trace(format="dict")
    c.shutdown()
    roots = d["roots"]
    epochs = [r for r in roots if r["name"] == "epoch"]
    assert [e["index"] for e in epochs] == [0, 1] and epochs[0]["attrs"]["framework"] == "transformers"
    steps = [s for e in epochs for s in e["children"] if s["name"] == "step"]
    assert [s["index"] for s in steps] == [0, 1, 2, 3]
    for s in steps:
        assert [ch["name"] for ch in s["children"]] == ["forward", "backward", "optimizer_step"], shape(s)
    # data loading is timed under the epoch (the Trainer fetches before on_step_begin)
    assert all("data_load" in [ch["name"] for ch in e["children"]] for e in epochs)
    assert len(marks(roots, "loss")) == 4 and len(marks(roots, "learning_rate")) == 4
    evals = find(roots, "evaluate")
    assert len(evals) == 2 and "eval_loss" in [m["name"] for m in evals[0]["marks"]]
    assert "forward" in names(evals[0]) and "backward" not in names(evals[0])
    assert not find(roots, "epoch")[0]["attrs"].get("error")


def test_trainer_snapshots_the_model_at_epoch_end(tmp_path, spool_dir) -> None:  # noqa: ANN001
    from cirron.spool import load_spool

    c = Cirron(spool_dir=spool_dir)
    c.profile(frameworks=["transformers"], snapshots="stats")
    _trainer(tmp_path).train()
    c.shutdown()
    snaps = [s for sess in load_spool(spool_dir).sessions for s in sess.snapshots]
    assert snaps and any(s["tensor"].endswith("classifier.weight") for s in snaps)


def test_callback_by_hand_and_uninstalled_at_shutdown(tmp_path, spool_dir) -> None:  # noqa: ANN001
    import transformers.trainer as hf

    from cirron.integrations.transformers import CirronCallback

    before = (list(hf.DEFAULT_CALLBACKS), hf.Trainer.__dict__["evaluate"])
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["transformers"])
    assert list(hf.DEFAULT_CALLBACKS) != before[0]
    c.shutdown()
    assert (list(hf.DEFAULT_CALLBACKS), hf.Trainer.__dict__["evaluate"]) == before
    c2 = Cirron(spool_dir=spool_dir, output="none")
    c2.profile(frameworks=[])
    _trainer(tmp_path, callbacks=[CirronCallback(c2)]).train()
    d = c2.trace(format="dict")
    c2.shutdown()
    assert [r["name"] for r in d["roots"] if r["name"] == "epoch"] == ["epoch", "epoch"]
    assert len(find(d["roots"], "step")) == 4 and not find(d["roots"], "forward")  # torch not enabled
    evals = find(d["roots"], "evaluate")  # no class patch here: the callback times evaluate itself
    assert len(evals) == 2 and "eval_loss" in [m["name"] for m in evals[0]["marks"]]


def test_callback_by_hand_times_a_later_evaluate_call(tmp_path, spool_dir) -> None:  # noqa: ANN001
    from cirron.integrations.transformers import CirronCallback

    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=["torch"])
    trainer = _trainer(tmp_path, callbacks=[CirronCallback(c)])
    trainer.evaluate()
    d = c.trace(format="dict")
    c.shutdown()
    evals = [r for r in d["roots"] if r["name"] == "evaluate"]
    assert len(evals) == 1 and "forward" in names(evals[0]), [shape(r) for r in d["roots"]]
