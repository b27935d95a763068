"""Drops from S3 (moto in server mode on 127.0.0.1): the same ingestion as a local folder, through boto3;
faults injected into the transfers are retried, or reported with the drop kept in incoming/."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from botocore.exceptions import ResponseStreamingError

from helpers.drops import copy_project, dvc_file, make_drop
from wsss.ops import s3 as s3lib
from wsss.ops.drops import READY, S3DropArea
from wsss.ops.ingest import ingest
from wsss.settings import load_settings

pytestmark = pytest.mark.slow
_buckets = itertools.count()


def upload_drop(s3, bucket: str, name: str, folder: Path) -> None:
    S3DropArea(f"s3://{bucket}/team", s3=s3).deliver(folder, name)


def keys(s3, bucket: str, prefix: str) -> list[str]:
    return [o["key"] for o in s3lib.list_objects(s3, s3lib.S3Uri(bucket, prefix))]


class BrokenBody:
    """A GetObject body whose connection drops after the first few bytes."""

    def __init__(self, body):
        self.body, self.served = body, False

    def read(self, n=-1):
        if not self.served:
            self.served = True
            return self.body.read(8)
        raise ResponseStreamingError(error="connection reset by peer (injected)")

    def close(self):
        self.body.close()


def break_downloads(s3, times: int | None) -> dict:
    """Inject a dropped connection mid-body into the next `times` GetObject responses (None: all)."""
    count = {"broken": 0}

    def after_call(parsed, **_):
        if "Body" in parsed and (times is None or count["broken"] < times):
            count["broken"] += 1
            parsed["Body"] = BrokenBody(parsed["Body"])

    s3.meta.events.register("after-call.s3.GetObject", after_call)
    return count


@pytest.fixture
def world(tmp_path, monkeypatch, moto_s3, drop_project):
    project = copy_project(drop_project, tmp_path / "project")
    monkeypatch.chdir(project)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "t")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "t@t")
    s3 = s3lib.client()
    bucket = f"drops-{next(_buckets)}"
    s3lib.ensure_bucket(s3, bucket)
    return project, s3, bucket, tmp_path


def test_s3_drops_merged_and_quarantined(world):
    project, s3, bucket, tmp = world
    upload_drop(s3, bucket, "good", make_drop(tmp / "good", 500))
    upload_drop(s3, bucket, "bad", make_drop(tmp / "bad", 600, labels=("cat", "zebra")))
    area = S3DropArea(f"s3://{bucket}/team", s3=s3)
    assert area.incoming() == ["bad", "good"]
    outcomes = {o.drop: o for o in ingest(area, load_settings(), project, log=lambda s: None)}
    assert outcomes["good"].status == "merged" and outcomes["bad"].status == "quarantined"
    assert (project / "data/raw/base/drops/good/images/500-1.png").read_bytes() == (tmp / "good/images/500-1.png").read_bytes()
    assert keys(s3, bucket, "team/incoming/") == []
    assert sorted(keys(s3, bucket, "team/accepted/good/")) == [f"team/accepted/good/{k}" for k in
                                                               ("images/500-0.png", "images/500-1.png", "labels.csv")]
    report = keys(s3, bucket, "team/quarantine/bad.report/")
    assert "team/quarantine/bad.report/gx/uncommitted/data_docs/local_site/index.html" in report
    summary = s3.get_object(Bucket=bucket, Key="team/quarantine/bad.report/summary.json")["Body"].read()
    assert any(v.startswith("FAIL labels are in the vocabulary: 1 image") for v in json.loads(summary)["verdicts"])
    assert "team/quarantine/bad/labels.csv" in keys(s3, bucket, "team/quarantine/bad/")

    upload_drop(s3, bucket, "good", tmp / "good")  # the same drop delivered again
    version = dvc_file(project)
    [again] = ingest(area, load_settings(), project, log=lambda s: None)
    assert again.status == "already processed" and dvc_file(project) == version


def test_a_drop_is_taken_only_once_its_marker_is_uploaded_last(world):
    project, s3, bucket, tmp = world
    src, area = make_drop(tmp / "good", 500), S3DropArea(f"s3://{bucket}/team", s3=s3)
    s3lib.upload_dir(s3, src, s3lib.S3Uri(bucket, "team/incoming/good/"), skip=(READY, "images/500-1.png"))
    lines = []
    assert ingest(area, load_settings(), project, log=lines.append) == []  # half-uploaded: left alone
    assert "drop good: still uploading (no _READY marker yet); left for a later run" in lines
    assert keys(s3, bucket, "team/incoming/good/") == ["team/incoming/good/images/500-0.png",
                                                      "team/incoming/good/labels.csv"]
    assert keys(s3, bucket, "team/quarantine/") == [] and not (project / "reports/drops/good").exists()

    s3lib.delete_keys(s3, bucket, keys(s3, bucket, "team/incoming/good/"))
    puts = []
    s3.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: puts.append(params["Key"]))
    assert area.deliver(src, "good") == 3
    assert puts[-1] == f"team/incoming/good/{READY}" and len(puts) == 4  # the marker last, once
    [o] = ingest(area, load_settings(), project, log=lambda s: None)
    assert o.status == "merged" and keys(s3, bucket, "team/incoming/") == []
    assert f"team/accepted/good/{READY}" not in keys(s3, bucket, "team/accepted/good/")


def test_dropped_connections_mid_download_are_retried(world):
    project, s3, bucket, tmp = world
    upload_drop(s3, bucket, "good", make_drop(tmp / "good", 500))
    injected = break_downloads(s3, times=3)
    [o] = ingest(S3DropArea(f"s3://{bucket}/team", s3=s3), load_settings(), project, log=lambda s: None)
    assert injected["broken"] == 3
    assert o.status == "merged"
    for name in ("500-0.png", "500-1.png"):  # whole files, not the 8 bytes before each break
        assert (project / "data/raw/base/drops/good/images" / name).read_bytes() == (tmp / "good/images" / name).read_bytes()


def test_a_transfer_that_keeps_failing_is_reported_and_the_drop_kept(world):
    project, s3, bucket, tmp = world
    upload_drop(s3, bucket, "good", make_drop(tmp / "good", 500))
    before = dvc_file(project)
    break_downloads(s3, times=None)
    [o] = ingest(S3DropArea(f"s3://{bucket}/team", s3=s3, attempts=2), load_settings(), project, log=lambda s: None)
    assert o.status == "error"
    assert f"downloading s3://{bucket}/team/incoming/good/" in o.detail and "left in incoming/" in o.detail
    assert len(keys(s3, bucket, "team/incoming/good/")) == 4  # nothing lost: 3 files and the marker
    assert dvc_file(project) == before and not (project / "data/raw/base/drops").exists()
    assert not (project / ".wsss/staging/good").exists() and not list((project / ".wsss/staging").glob(".good*"))


def test_missing_bucket_and_bad_uri_are_one_line(world):
    project, s3, bucket, tmp = world
    from wsss.errors import WsssError

    with pytest.raises(WsssError, match=r"^listing s3://no-such-bucket/team/incoming/: NoSuchBucket"):
        S3DropArea("s3://no-such-bucket/team", s3=s3).incoming()
    with pytest.raises(WsssError, match="not an S3 URI"):
        S3DropArea("s3:///team")


def test_a_key_that_would_escape_the_drop_is_refused(world):
    project, s3, bucket, tmp = world
    upload_drop(s3, bucket, "evil", make_drop(tmp / "evil", 500))
    s3.put_object(Bucket=bucket, Key="team/incoming/evil//tmp/wsss-escaped", Body=b"x")
    s3.put_object(Bucket=bucket, Key="team/incoming/../x/y", Body=b"x")  # not under any drop name
    [o] = ingest(S3DropArea(f"s3://{bucket}/team", s3=s3), load_settings(), project, log=lambda s: None)
    assert o.status == "error" and "would leave its drop folder" in o.detail
    assert not Path("/tmp/wsss-escaped").exists() and not (project / "data/raw/base/drops").exists()


def test_a_delete_s3_refuses_is_reported_and_the_next_run_finishes_the_move(world):
    project, s3, bucket, tmp = world
    upload_drop(s3, bucket, "good", make_drop(tmp / "good", 500))
    area = S3DropArea(f"s3://{bucket}/team", s3=s3)

    def refuse(**_):  # S3 answers 200 but lists every key as not deleted (and deletes nothing)
        from botocore.awsrequest import AWSResponse

        errors = [{"Key": "team/incoming/good/labels.csv", "Code": "InternalError", "Message": "injected"}]
        return AWSResponse("", 200, {}, None), {"Errors": errors, "ResponseMetadata": {"HTTPStatusCode": 200}}

    s3.meta.events.register("before-call.s3.DeleteObjects", refuse)
    [o] = ingest(area, load_settings(), project, log=lambda s: None)
    assert o.status == "merged" and "archiving failed" in o.detail and "InternalError" in o.detail
    s3.meta.events.unregister("before-call.s3.DeleteObjects", refuse)
    version = dvc_file(project)
    [again] = ingest(area, load_settings(), project, log=lambda s: None)
    assert again.status == "already processed" and keys(s3, bucket, "team/incoming/") == []
    assert dvc_file(project) == version and len(keys(s3, bucket, "team/accepted/good/")) == 3
