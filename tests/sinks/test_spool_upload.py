"""cirron.spool.upload: plan and send a spool's batch files, without the CLI."""

from __future__ import annotations

from pathlib import Path

from spool_factory import SpoolFactory

from cirron.sinks.upload import UploadState, batches_url
from cirron.spool.upload import plan_upload, upload_pending

from .conftest import Receiver


def test_plan_then_upload_skips_what_cannot_be_sent_and_resumes(platform_receiver: Receiver, tmp_path: Path) -> None:
    factory = SpoolFactory(tmp_path)
    factory.session()
    factory.write_raw("1776486598051509999-" + "ab" * 16 + ".json", b'{"schema_version": 1, "spans": [')  # torn
    warnings: list[str] = []
    plan = plan_upload(factory.spool_dir, warnings.append)
    assert plan.pending == plan.files and plan.already_uploaded == 0 and len(plan.files) >= 1

    platform_receiver.plan = [("status", 500, {}, b"")] + [("ok",)] * 50
    url = batches_url(platform_receiver.url)
    sent: list[str] = []
    result = upload_pending(plan, url, "sk-test-0123456789", "ws-1", 5.0, warnings.append,
                            on_uploaded=lambda bf: sent.append(bf.batch_id))
    assert not result.interrupted and result.uploaded == len(sent)
    assert result.uploaded + result.skipped + result.failed == len(plan.pending)
    assert UploadState(factory.spool_dir).uploaded_ids() == set(sent)

    again = plan_upload(factory.spool_dir)
    assert again.already_uploaded == len(sent) and len(again.pending) == len(plan.pending) - len(sent)
