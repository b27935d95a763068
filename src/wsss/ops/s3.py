"""S3 through boto3, for any S3-compatible store: a client from the environment, listing, and transfers
that retry and never leave half a file.

Credentials come from the environment or an AWS profile (never the repository). The endpoint is the
`endpoint_url` argument, else `$AWS_ENDPOINT_URL_S3` / `$AWS_ENDPOINT_URL` (MinIO, moto, Ceph, ...), else AWS.
Every failure that a user can act on becomes one `S3Error` line naming the object and the problem.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from wsss.errors import WsssError


class S3Error(WsssError):
    """S3 refused or failed a request (after retries): names the bucket/key and the reason."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    prefix: str  # no leading slash; "" or ends with "/"

    @classmethod
    def parse(cls, uri: str) -> "S3Uri":
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise WsssError(f"{uri!r}: not an S3 URI (expected s3://bucket/prefix)")
        bucket, _, prefix = uri[5:].partition("/")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def join(self, *parts: str) -> "S3Uri":
        tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return S3Uri(self.bucket, self.prefix + (tail + "/" if tail else ""))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def endpoint_from_env(endpoint_url: str | None = None) -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def client(endpoint_url: str | None = None, retries: int = 5):
    """A boto3 S3 client; botocore retries throttling/5xx/connection errors (`standard` mode) `retries` times."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": retries, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                    s3={"addressing_style": "path"} if endpoint_from_env(endpoint_url) else None)
    return boto3.client("s3", endpoint_url=endpoint_from_env(endpoint_url), config=config,
                        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1")


def bound_retries(retries: int) -> None:
    """botocore's own retry settings for the children we start (`dvc push`/`pull` through s3fs and
    aiobotocore), unless the environment or AWS profile sets them: `standard` mode, `retries` attempts per
    request. With them a stopped store fails a `dvc push` in seconds (`ops.retries`; the S3 remote's
    connect/read timeouts bound a store that hangs: `wsss infra s3-init` sets them)."""
    os.environ.setdefault("AWS_RETRY_MODE", "standard")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", str(retries))


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """botocore failures → one S3Error line: `what: reason`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        raise S3Error(f"{what}: {err.get('Code', '?')} {err.get('Message', '')}".rstrip()) from None
    except BotoCoreError as e:
        raise S3Error(f"{what}: {e}") from None


def list_objects(s3, uri: S3Uri) -> list[dict]:
    """Every object under the prefix: [{"key", "size", "etag"}], sorted by key."""
    out = []
    with s3_errors(f"listing {uri}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.prefix):
            out += [{"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')} for o in page.get("Contents", [])]
    return sorted(out, key=lambda o: o["key"])


def list_children(s3, uri: S3Uri) -> list[str]:
    """Names of the immediate sub-prefixes ("folders") under the prefix, sorted."""
    names = []
    with s3_errors(f"listing {uri}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.prefix, Delimiter="/"):
            names += [p["Prefix"][len(uri.prefix):].strip("/") for p in page.get("CommonPrefixes", [])]
    return sorted(n for n in names if n)


def retrying(action: Callable[[], None], what: str, attempts: int, delay: float = 0.5) -> None:
    """Run `action`, retrying transfer failures that botocore did not (a connection dropped mid-body)
    with exponential backoff; the last failure becomes one S3Error line."""
    from boto3.exceptions import Boto3Error  # transfer manager: retries exceeded, upload failed
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "NoSuchBucket", "AccessDenied", "403", "404", "InvalidAccessKeyId",
                        "SignatureDoesNotMatch"} or attempt == attempts:
                raise S3Error(f"{what}: {code} {e.response.get('Error', {}).get('Message', '')}".rstrip()) from None
        except (BotoCoreError, Boto3Error, OSError, RetriesExceededError, S3DownloadFailedError) as e:
            if attempt == attempts:
                raise S3Error(f"{what}: {e} (after {attempts} attempts)") from None
        time.sleep(delay * 2 ** (attempt - 1))


def download(s3, bucket: str, key: str, dest: Path, size: int | None = None, attempts: int = 4) -> None:
    """Object → `dest`, through `dest.part` renamed on success; a size mismatch counts as a failed try."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def once() -> None:
        s3.download_file(bucket, key, str(part))
        if size is not None and part.stat().st_size != size:
            raise OSError(f"got {part.stat().st_size} bytes, expected {size}")
        os.replace(part, dest)

    try:
        retrying(once, f"downloading s3://{bucket}/{key}", attempts)
    finally:
        part.unlink(missing_ok=True)


def upload_dir(s3, src: Path, uri: S3Uri, attempts: int = 4, skip: tuple[str, ...] = ()) -> int:
    """Every file under `src` (but the relative paths in `skip`) → `uri/<relative path>`; returns the
    number of files."""
    files = sorted(p for p in Path(src).rglob("*") if p.is_file() and p.relative_to(src).as_posix() not in skip)
    for p in files:
        key = uri.prefix + p.relative_to(src).as_posix()
        retrying(lambda: s3.upload_file(str(p), uri.bucket, key), f"uploading {p} to s3://{uri.bucket}/{key}", attempts)
    return len(files)


def copy_keys(s3, bucket: str, pairs: list[tuple[str, str]], attempts: int = 4) -> None:
    """Server-side copy of each (source key, destination key) in the bucket."""
    for src, dst in pairs:
        retrying(lambda: s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}),
                 f"copying s3://{bucket}/{src} to s3://{bucket}/{dst}", attempts)


def delete_keys(s3, bucket: str, keys: list[str]) -> None:
    """Delete exactly these keys; a key S3 could not delete is an error (a quiet batch still lists them)."""
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i:i + 1000]]
        with s3_errors(f"deleting from s3://{bucket}"):
            errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors", [])
        if errors:
            e = errors[0]
            raise S3Error(f"deleting s3://{bucket}/{e.get('Key')}: {e.get('Code')} {e.get('Message', '')} "
                          f"({len(errors)} key(s) not deleted)".rstrip())


def ensure_bucket(s3, bucket: str) -> bool:
    """Create the bucket unless it exists (and is ours); True when it was created."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise S3Error(f"s3://{bucket}: {e.response.get('Error', {}).get('Code')} (exists but is not yours?)") from None
    region = s3.meta.region_name
    kw = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    with s3_errors(f"creating bucket s3://{bucket}"):
        s3.create_bucket(Bucket=bucket, **kw)
    return True
