"""The S3 backend of a prompt table's store (`base.Store`): objects under s3://BUCKET/PREFIX, the manifest
replaced by a conditional PutObject (If-Match on its ETag, If-None-Match: * for the first one).

Errors are mapped to `StoreError` subclasses that name the bucket and endpoint and never credentials;
boto3 is imported only when an S3 client is made.
"""

from __future__ import annotations

import os
import re
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from promptray.platform.errors import (
    PromptTableError,
    StoreAccessDeniedError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    TableConflictError,
)
from promptray.platform.storage.base import MANIFEST_KEY, StoredObject, check_key

S3_CONNECT_TIMEOUT_S = 3  # an unreachable endpoint fails in seconds, not minutes
S3_READ_TIMEOUT_S = 30
S3_MAX_ATTEMPTS = 3  # botocore "standard" retries: transient errors only
CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
ACCESS_CODES = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "AuthorizationHeaderMalformed")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _redact_url(url: str | None) -> str:
    """`url` without any user:password part."""
    if not url:
        return "(default AWS endpoint)"
    if "://" not in url:
        return re.sub(r"^[^/]*@", "", url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def make_s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client from the standard AWS chain (env, profile, instance role). The endpoint is
    `endpoint_url`, else whatever boto3 reads itself (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the
    profile's endpoint_url), else AWS. Short connect timeout and few retries; path-style addressing when
    an endpoint is set (S3-compatible servers)."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise PromptTableError("s3:// prompt tables need boto3: pip install 'promptray[s3]'") from None
    custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
                    retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                    s3={"addressing_style": "path"} if custom else None)
    try:
        session = boto3.session.Session()
        region = None if session.region_name else "us-east-1"
        return session.client("s3", endpoint_url=endpoint_url or None, config=config, region_name=region)
    except ValueError:  # botocore's message repeats the URL as given
        err = PromptTableError(f"cannot set up the S3 client: invalid endpoint URL {_redact_url(custom)!r}; "
                               f"use http(s)://HOST[:PORT]")
    except BotoCoreError as e:  # e.g. AWS_PROFILE names no profile
        err = PromptTableError(f"cannot set up the S3 client for endpoint {_redact_url(custom)}: "
                               f"{type(e).__name__} (check AWS_PROFILE and the AWS config file)")
    raise err


class S3Store:
    """Store on `s3://bucket/prefix`; the manifest etag is S3's ETag."""

    max_parallel_writes = 8

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        if not BUCKET_RE.fullmatch(bucket or ""):
            raise PromptTableError(f"invalid S3 bucket name {bucket!r}: 3-63 of lowercase letters, digits, "
                                   f"'.', '-'; use s3://BUCKET/PREFIX")
        prefix = (prefix or "").strip("/")
        if prefix:
            check_key(prefix, f"s3://{bucket}")
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix, endpoint_url
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self):
        """The boto3 S3 client, made on first use (thread-safe) for `endpoint_url`."""
        with self._lock:
            if self._client is None:
                self._client = make_s3_client(self.endpoint_url)
            return self._client

    def location(self) -> str:
        """s3://bucket[/prefix]."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def endpoint(self) -> str:
        """The endpoint URL the client talks to, credentials in it redacted (for messages)."""
        return _redact_url(getattr(self.client.meta, "endpoint_url", None) or self.endpoint_url)

    def _key(self, key: str) -> str:
        check_key(key, self.location())
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, op: str, key: str | None) -> PromptTableError:
        from botocore import exceptions as bx

        what = f"{self.location()}/{key}" if key else self.location()
        endpoint = self.endpoint()
        if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            return StoreAccessDeniedError(
                f"no usable AWS credentials for prompt table {self.location()} (endpoint {endpoint}): set "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance role")
        if isinstance(e, (bx.ConnectionError, bx.HTTPClientError)):
            return StoreUnavailableError(
                f"cannot reach the S3 endpoint {endpoint} for prompt table {self.location()} "
                f"({type(e).__name__} during {op}); check the endpoint URL (AWS_ENDPOINT_URL or the "
                f"endpoint option) and that the server is up, then retry")
        if not isinstance(e, bx.ClientError):
            return StoreError(f"S3 {op} of {what} failed at {endpoint}: {type(e).__name__}")
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return StoreNotFoundError(f"S3 bucket {self.bucket!r} does not exist at endpoint {endpoint} "
                                      f"(prompt table {self.location()}); create it or fix the URI")
        if code in ACCESS_CODES or status == 403:
            return StoreAccessDeniedError(
                f"S3 endpoint {endpoint} denied {op} on {what} ({code or status}): check the credentials "
                f"and that they allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on "
                f"{self.location()}")
        if (status or 0) >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            return StoreUnavailableError(f"S3 endpoint {endpoint} failed {op} on {what} ({code or status}); "
                                         f"retry later")
        return StoreError(f"S3 {op} of {what} failed at {endpoint}: {code or 'error'} (HTTP {status})")

    def _call(self, op: str, key: str | None, ok_codes: tuple[str, ...] = (), **params):
        """client.<op>(Bucket=..., **params) -> (response, None), or (None, code) for a code in `ok_codes`;
        any other failure raises a StoreError without a chained botocore traceback."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(Bucket=self.bucket, **params), None
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ok_codes:
                return None, code
            err = self._error(e, op, key)
        except BotoCoreError as e:
            err = self._error(e, op, key)
        raise err

    def _get(self, key: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import BotoCoreError

        r, code = self._call("get_object", key, ("NoSuchKey", "404", "AccessDenied"), Key=self._key(key))
        if code == "AccessDenied":
            # without an unconditional s3:ListBucket, S3 answers 403 for a missing key: tell the two apart
            # with a listing under the key (allowed by a prefix-scoped ListBucket); else it is a real denial
            if self._listed(key):
                raise self._denied("get_object", key)
            return None, None
        if r is None:
            return None, None
        try:
            return r["Body"].read(), r.get("ETag")
        except BotoCoreError as e:
            err = self._error(e, "get_object", key)
        raise err

    def _listed(self, key: str) -> bool:
        r, _ = self._call("list_objects_v2", key, Prefix=self._key(key), MaxKeys=1)
        return any(o["Key"] == self._key(key) for o in r.get("Contents", []))

    def _denied(self, op: str, key: str) -> StoreAccessDeniedError:
        return StoreAccessDeniedError(
            f"S3 endpoint {self.endpoint()} denied {op} on {self.location()}/{key} (AccessDenied): check that "
            f"the credentials allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on "
            f"{self.location()}")

    def read(self, key: str) -> bytes | None:
        """GetObject's bytes; None when the key does not exist."""
        return self._get(key)[0]

    def write_immutable(self, key: str, data: bytes) -> bool:
        """PutObject with If-None-Match: * (never overwrites); False when the same bytes are already there."""
        for attempt in range(5):
            r, code = self._call("put_object", key, CONFLICT_CODES, Key=self._key(key), Body=data,
                                 IfNoneMatch="*")
            if r is not None:
                return True
            existing = self.read(key) if code in ("PreconditionFailed", "412") else None
            if existing == data:
                return False
            if existing is not None:
                raise PromptTableError(f"object {key!r} in prompt table {self.location()} already exists "
                                       f"with other content; objects are never overwritten")
            time.sleep(0.05 * (attempt + 1))  # a concurrent write of the key is in progress
        raise TableConflictError(f"could not create object {key!r} in prompt table {self.location()}: "
                                 f"concurrent writes of the same key kept conflicting; retry")

    def read_manifest(self) -> tuple[bytes | None, str | None]:
        """(manifest bytes, S3 ETag); (None, None) without a manifest."""
        return self._get(MANIFEST_KEY)

    def swap_manifest(self, data: bytes, expected_etag: str | None) -> bool:
        """Conditional PutObject of the manifest; False on 412/409 (or 404: it was removed)."""
        cond = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
        r, _ = self._call("put_object", MANIFEST_KEY, CONFLICT_CODES + ("NoSuchKey", "404"),
                          Key=self._key(MANIFEST_KEY), Body=data, ContentType="application/json", **cond)
        return r is not None

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """ListObjectsV2 through boto3's paginator, keys relative to the table's prefix, sorted by key."""
        from botocore.exceptions import BotoCoreError, ClientError

        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix)
        try:
            out = [StoredObject(key=o["Key"][len(root):], size=int(o["Size"]), modified=o["LastModified"].timestamp())
                   for page in pages for o in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as e:
            err = self._error(e, "list_objects_v2", prefix)
            raise err from None
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        """DeleteObject (S3 answers success for an absent key too)."""
        self._call("delete_object", key, Key=self._key(key))


def read_uri(uri: str, *, endpoint_url: str | None = None) -> bytes | None:
    """Bytes of one object named by a full s3://BUCKET/KEY URI (data files); None when it does not exist."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise PromptTableError(f"data URI {uri!r} must be s3://BUCKET/KEY")
    folder, _, name = key.rpartition("/")
    return S3Store(bucket, folder, endpoint_url=endpoint_url).read(name)


def uri_exists(uri: str, *, endpoint_url: str | None = None) -> bool:
    """Whether the object a full s3://BUCKET/KEY URI names exists (one listing request, no download)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise PromptTableError(f"data URI {uri!r} must be s3://BUCKET/KEY")
    folder, _, name = key.rpartition("/")
    return S3Store(bucket, folder, endpoint_url=endpoint_url)._listed(name)
