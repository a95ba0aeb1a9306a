"""The stores behind prompt tables: the same contract on a local folder and on S3 (SeaweedFS), URI
parsing, endpoint selection, and clear errors for an unreachable endpoint, bad credentials, no bucket."""

from __future__ import annotations

import time

import pytest

from promptray.platform.errors import (
    PromptTableError,
    StoreAccessDeniedError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from promptray.platform.ports import free_ports
from promptray.platform.storage.s3 import S3Store, _redact_url
from promptray.platform.storage.stores import LocalStore, store_for_uri
from promptray.platform.table.table import PromptTable

from table_helpers import isolate_aws_env


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store(request.getfixturevalue("s3_bucket"), "some/prefix")


def test_manifest_compare_and_swap(store):
    assert store.read_manifest() == (None, None)
    assert not store.swap_manifest(b"one", expected_etag="stale")  # no manifest yet: If-Match fails
    assert store.swap_manifest(b"one", expected_etag=None)
    data, etag = store.read_manifest()
    assert data == b"one" and etag
    assert not store.swap_manifest(b"two", expected_etag=None)  # If-None-Match: * on an existing one
    assert store.swap_manifest(b"two", expected_etag=etag)
    assert not store.swap_manifest(b"three", expected_etag=etag)  # stale etag
    assert store.read_manifest()[0] == b"two"


def test_immutable_objects_list_and_delete(store):
    assert store.read("objects/x/v1.safetensors") is None
    assert store.write_immutable("objects/x/v1.safetensors", b"abc") is True
    assert store.write_immutable("objects/x/v1.safetensors", b"abc") is False  # same bytes: nothing written
    with pytest.raises(PromptTableError, match="never overwritten"):
        store.write_immutable("objects/x/v1.safetensors", b"abd")
    store.write_immutable("objects/y/v1.safetensors", b"hello")
    store.swap_manifest(b"{}", None)
    assert store.read("objects/x/v1.safetensors") == b"abc"
    listed = store.list_objects("objects/")
    assert [(o.key, o.size) for o in listed] == [("objects/x/v1.safetensors", 3), ("objects/y/v1.safetensors", 5)]
    assert all(abs(o.modified - time.time()) < 120 for o in listed)
    store.delete("objects/x/v1.safetensors")
    store.delete("objects/x/v1.safetensors")  # already gone: fine
    assert [o.key for o in store.list_objects("objects/")] == ["objects/y/v1.safetensors"]
    for bad in ("../outside", "/abs", "a//b", ""):
        with pytest.raises(PromptTableError, match="invalid object key"):
            store.read(bad)


def test_store_for_uri():
    s = store_for_uri("s3://my-bucket/a/b/")
    assert isinstance(s, S3Store) and (s.bucket, s.prefix, s.location()) == ("my-bucket", "a/b", "s3://my-bucket/a/b")
    assert store_for_uri("s3://my-bucket").location() == "s3://my-bucket"
    assert store_for_uri("s3://my-bucket/t", endpoint_url="http://127.0.0.1:1").endpoint_url == "http://127.0.0.1:1"
    assert isinstance(store_for_uri("file:///tmp/x"), LocalStore) and isinstance(store_for_uri("rel/x"), LocalStore)
    for bad, needle in [("s3://", "names no bucket"), ("s3://Bad_Bucket/x", "invalid S3 bucket"),
                        ("s3://bkt/../x", "invalid object key"), ("gs://b/x", "s3://BUCKET/PREFIX")]:
        with pytest.raises(PromptTableError, match=needle):
            store_for_uri(bad)
    assert _redact_url("http://user:pw@host:9000/p?q=1") == "http://host:9000/p"


@pytest.mark.s3
def test_endpoint_from_env_or_argument(s3_bucket, s3_env, monkeypatch):
    """boto3 reads AWS_ENDPOINT_URL itself; an explicit endpoint_url wins over it."""
    PromptTable(f"s3://{s3_bucket}/t").store.swap_manifest(b"x", None)  # endpoint from the environment
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    assert S3Store(s3_bucket, "t", endpoint_url=s3_env.endpoint).read_manifest()[0] == b"x"
    with pytest.raises(StoreUnavailableError):
        S3Store(s3_bucket, "t").read_manifest()


def _assert_clean(err: Exception, *needles: str) -> None:
    """One line naming what is needed, no secret, no chained botocore traceback."""
    msg = str(err)
    for needle in needles:
        assert needle in msg, (needle, msg)
    for secret in ("promptray-test-secret", "wrong-secret", "wrong-key-id", "promptray-test"):
        assert secret not in msg, msg
    assert err.__cause__ is None and (err.__suppress_context__ or err.__context__ is None)
    assert "Traceback" not in msg and "\n" not in msg


@pytest.mark.s3
def test_unreachable_endpoint_fails_fast_and_clearly(monkeypatch, tmp_path):
    isolate_aws_env(monkeypatch, tmp_path, None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as e:
        PromptTable("s3://some-bucket/t", endpoint_url=endpoint).tasks()
    assert time.monotonic() - start < 15
    _assert_clean(e.value, endpoint, "s3://some-bucket/t")


@pytest.mark.s3
def test_wrong_credentials(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StoreAccessDeniedError) as e:
        PromptTable(f"s3://{s3_bucket}/t").exists()
    _assert_clean(e.value, s3_bucket, "credentials")


@pytest.mark.s3
def test_no_credentials(s3_env, monkeypatch, tmp_path):
    isolate_aws_env(monkeypatch, tmp_path, None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    with pytest.raises(StoreAccessDeniedError) as e:
        PromptTable("s3://any-bucket/t").exists()
    _assert_clean(e.value, "AWS_ACCESS_KEY_ID", "s3://any-bucket/t")


@pytest.mark.s3
def test_missing_bucket(s3_env):
    table = PromptTable("s3://no-such-bucket-here/t")
    for op in (table.exists, lambda: table.get("x")):
        with pytest.raises(StoreNotFoundError) as e:
            op()
        _assert_clean(e.value, "'no-such-bucket-here'", s3_env.endpoint)


def test_access_denied_on_a_missing_key_reads_as_absent():
    """With a prefix-scoped s3:ListBucket (infra/s3/iam_policy.json) S3 answers 403 for a missing key; a
    listing under the key tells "absent" from a real denial."""
    boto3 = pytest.importorskip("boto3")
    from botocore.stub import Stubber

    client = boto3.session.Session().client("s3", region_name="us-east-1", aws_access_key_id="x",
                                            aws_secret_access_key="y")
    store = S3Store("bkt", "pre", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        stub.add_response("list_objects_v2", {"KeyCount": 0}, {"Bucket": "bkt", "Prefix": "pre/manifest.json",
                                                               "MaxKeys": 1})
        assert store.read_manifest() == (None, None)
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        stub.add_response("list_objects_v2", {"Contents": [{"Key": "pre/manifest.json"}]})
        with pytest.raises(StoreAccessDeniedError, match="s3:GetObject"):
            store.read_manifest()
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        stub.add_client_error("list_objects_v2", "AccessDenied", http_status_code=403)
        with pytest.raises(StoreAccessDeniedError, match="s3:ListBucket"):
            store.read("objects/a/v1.safetensors")


def test_bad_endpoint_url_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    isolate_aws_env(monkeypatch, tmp_path, None)
    with pytest.raises(PromptTableError, match="cannot set up the S3 client") as e:
        PromptTable("s3://bkt/t", endpoint_url="user:hunter2@no-scheme").exists()
    assert "hunter2" not in str(e.value)
    assert _redact_url("user:pw@host") == "host"
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(PromptTableError, match="AWS_PROFILE"):
        PromptTable("s3://bkt/t", endpoint_url="http://127.0.0.1:9").exists()


def test_listing_follows_every_page():
    """list_objects reads all pages of a listing (boto3's paginator sends each continuation token)."""
    boto3 = pytest.importorskip("boto3")
    from datetime import datetime, timezone

    from botocore.stub import Stubber

    client = boto3.session.Session().client("s3", region_name="us-east-1", aws_access_key_id="x",
                                            aws_secret_access_key="y")
    store = S3Store("bkt", "pre", client=client)
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    def page(*keys: str, token: str | None = None) -> dict:
        contents = [{"Key": f"pre/{k}", "Size": len(k), "LastModified": at} for k in keys]
        more = {"IsTruncated": True, "NextContinuationToken": token} if token else {"IsTruncated": False}
        return {"Contents": contents, **more}

    asked = {"Bucket": "bkt", "Prefix": "pre/objects/"}
    with Stubber(client) as stub:
        stub.add_response("list_objects_v2", page("objects/b/2", "objects/a/1", token="t1"), asked)
        stub.add_response("list_objects_v2", page("objects/c/3"), {**asked, "ContinuationToken": "t1"})
        listed = store.list_objects("objects/")
        stub.assert_no_pending_responses()
    assert [(o.key, o.size, o.modified) for o in listed] == [
        ("objects/a/1", 11, at.timestamp()), ("objects/b/2", 11, at.timestamp()), ("objects/c/3", 11, at.timestamp())]
    with Stubber(client) as stub:
        stub.add_response("list_objects_v2", page("objects/a/1", token="t1"))
        stub.add_client_error("list_objects_v2", "AccessDenied", http_status_code=403)
        with pytest.raises(StoreAccessDeniedError, match="denied list_objects_v2"):
            store.list_objects("objects/")
