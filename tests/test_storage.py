"""S3 inputs and outputs against real servers on 127.0.0.1: moto's S3, and a faulty S3.

No boto3 or HTTP call is mocked: every request goes over a loopback socket. The Modal
path runs on the emulator of Modal's API (``tests/emulator``), in real container processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

import whisper_modal as wm
from tests.models_cache import tiny_en_cache
from tests.servers import FAKE_AWS_ENV, FaultyS3Server, S3Server, aws_env, free_port
from tests.wer import wer
from whisper_modal.delivery import result_keys, write_results
from whisper_modal.errors import map_boto_error
from whisper_modal.storage import (
    S3Object,
    S3Store,
    is_s3_uri,
    parse_s3_prefix,
    parse_s3_uri,
    safe_name,
)

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
REFERENCE = (ROOT / "examples" / "sample.txt").read_text()
SAMPLE_PATH = "/calls/2026/sample.flac"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with aws_env():
        server = S3Server()
        server.start()
        client = server.client()
        client.create_bucket(Bucket="calls")
        client.create_bucket(Bucket="versioned")
        client.put_bucket_versioning(
            Bucket="versioned", VersioningConfiguration={"Status": "Enabled"}
        )
        client.put_object(Bucket="calls", Key="2026/sample.flac", Body=SAMPLE.read_bytes())
        yield server
        server.stop()


def store(s3: S3Server, **kw: Any) -> S3Store:
    return S3Store(endpoint_url=s3.endpoint, region="us-east-1", **kw)


# --------------------------------------------------------------------------- URIs


def test_uris_are_parsed_literally() -> None:
    assert parse_s3_uri("s3://calls/a/b c.wav") == S3Object("calls", "a/b c.wav")
    assert parse_s3_uri("s3://calls/a%20b.wav").key == "a%20b.wav"  # as the AWS CLI reads it
    assert parse_s3_uri("s3://calls/what?.wav").key == "what?.wav"
    assert parse_s3_uri("s3://calls/k.wav?versionId=v1") == S3Object("calls", "k.wav", "v1")
    assert S3Object("calls", "k.wav", "v1").uri == "s3://calls/k.wav?versionId=v1"
    assert is_s3_uri("s3://x") and not is_s3_uri("S3://calls/k") and not is_s3_uri(b"s3://a/b")


@pytest.mark.parametrize(
    "uri",
    [
        "http://calls/k", "s3:/calls/k", "s3://", "s3://calls", "s3://calls/", "s3:///k",
        "s3://Calls/k", "s3://ab/k", "s3://a" + "b" * 63 + "/k", "s3://bad..bucket/k",
        "s3://-calls/k", "s3://calls-/k", "s3://a.-b/k", "s3://192.168.0.1/k",
        "s3://xn--calls/k", "s3://calls-s3alias/k", "s3://cal_ls/k",
        "s3://calls/a\x00b", "s3://calls/a\nb", "s3://calls/a\x7fb", "s3://calls/a\x85b",
        "s3://calls/" + "k" * 1025, "s3://calls/k?versionId=", "s3://calls/k?versionId=a\tb",
    ],
)  # fmt: skip
def test_malformed_uris_are_rejected(uri: str) -> None:
    with pytest.raises(wm.ConfigurationError):
        parse_s3_uri(uri)


@given(
    bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True),
    key=st.text(st.characters(min_codepoint=32, blacklist_categories=("Cc", "Cs")), min_size=1),
    version=st.none() | st.from_regex(r"[A-Za-z0-9._]{1,20}", fullmatch=True),
)
def test_uri_round_trip(bucket: str, key: str, version: str | None) -> None:
    if "?versionId=" in key or len(key.encode()) > 1024 or bucket.startswith("xn--"):
        return
    obj = S3Object(bucket, key, version)
    assert parse_s3_uri(obj.uri) == obj


def test_malformed_uri_fails_before_any_network() -> None:
    # nobody listens on this endpoint: contacting it would raise StorageTransient instead
    client = wm.Client(backend="local", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(wm.ConfigurationError):
        client.transcribe("s3://NOT_A_BUCKET/key.wav")
    with pytest.raises(wm.ConfigurationError):
        client.transcribe("s3://calls/")


# --------------------------------------------------------------------------- reads


def test_get_bytes_streams_into_one_buffer(s3: S3Server) -> None:
    data = store(s3, chunk_size=16 * 1024).get_bytes(parse_s3_uri("s3:/" + SAMPLE_PATH))
    assert type(data) is bytes and data == SAMPLE.read_bytes()
    assert len(data) > 10 * 16 * 1024  # many chunks, not one read


def test_empty_and_missing_objects(s3: S3Server) -> None:
    s3.client().put_object(Bucket="calls", Key="empty.wav", Body=b"")
    st_ = store(s3)
    assert st_.get_bytes(S3Object("calls", "empty.wav")) == b""
    assert st_.size(S3Object("calls", "empty.wav")) == 0
    for missing in (S3Object("calls", "nope.wav"), S3Object("no-such-bucket", "k.wav")):
        with pytest.raises(wm.StorageNotFound):
            st_.size(missing)


def test_versions(s3: S3Server) -> None:
    c = s3.client()
    v1 = c.put_object(Bucket="versioned", Key="a.txt", Body=b"one")["VersionId"]
    c.put_object(Bucket="versioned", Key="a.txt", Body=b"two")
    st_ = store(s3)
    assert st_.get_bytes(S3Object("versioned", "a.txt", v1)) == b"one"
    assert st_.get_bytes(parse_s3_uri(f"s3://versioned/a.txt?versionId={v1}")) == b"one"
    assert st_.get_bytes(S3Object("versioned", "a.txt")) == b"two"
    with pytest.raises(wm.StorageError):
        st_.get_bytes(S3Object("versioned", "a.txt", "no-such-version"))


def test_missing_objects_are_permanent(s3: S3Server) -> None:
    st_ = store(s3)
    with pytest.raises(wm.StorageNotFound):
        st_.get_bytes(S3Object("calls", "nope.wav"))
    with pytest.raises(wm.StorageNotFound):
        st_.get_bytes(S3Object("no-such-bucket", "k.wav"))
    with pytest.raises(wm.StorageNotFound):
        st_.put_bytes(S3Object("no-such-bucket", "k.json"), b"{}")
    assert not issubclass(wm.StorageNotFound, wm.TransientError)


def test_size_cap_refuses_before_download(s3: S3Server) -> None:
    before = len(s3.requests_for(SAMPLE_PATH))
    with pytest.raises(wm.StorageTooLarge, match="over the limit"):
        store(s3, max_object_bytes=1000).get_bytes(parse_s3_uri("s3:/" + SAMPLE_PATH))
    assert s3.requests_for(SAMPLE_PATH)[before:] == ["HEAD"]  # the server never saw a GET
    assert not issubclass(wm.StorageTooLarge, wm.TransientError)


def test_server_down_is_transient_and_recovers(s3: S3Server) -> None:
    st_ = store(s3, connect_timeout=1.0, read_timeout=2.0)
    obj = parse_s3_uri("s3:/" + SAMPLE_PATH)
    assert st_.get_bytes(obj)
    s3.stop()
    try:
        started = time.monotonic()
        with pytest.raises(wm.StorageTransient, match="unreachable") as info:
            st_.get_bytes(obj)
        assert time.monotonic() - started < 2.0  # one attempt: our policy owns retries
        assert isinstance(info.value, wm.TransientError)
        assert isinstance(info.value.__cause__, botocore.exceptions.EndpointConnectionError)
    finally:
        s3.start()
    assert st_.get_bytes(obj) == SAMPLE.read_bytes()  # moto keeps state across restarts


@pytest.mark.parametrize("mode", ["truncate", "stall", "slowdown"])
def test_broken_transfers_are_transient(mode: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    with aws_env(), FaultyS3Server(mode, body, stall_seconds=5.0) as server:
        st_ = S3Store(endpoint_url=server.endpoint, region="us-east-1", read_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(wm.StorageTransient):
            st_.get_bytes(S3Object("calls", "big.bin"))
        assert time.monotonic() - started < 3.0  # the stall is cut by read_timeout
        assert server.gets == 1  # botocore did not retry on its own


def test_object_replaced_between_head_and_get_is_transient(s3: S3Server) -> None:
    # Replace the object once HeadObject has answered: the If-Match pin must catch it.
    c = s3.client()
    c.put_object(Bucket="calls", Key="changing.bin", Body=b"a" * 1000)
    st_ = store(s3)

    replaced: list[bool] = []

    def replace(**_: Any) -> None:
        if not replaced:  # only before the first GetObject
            replaced.append(True)
            c.put_object(Bucket="calls", Key="changing.bin", Body=b"b" * 2000)

    st_.client.meta.events.register("before-call.s3.GetObject", replace)
    with pytest.raises(wm.StorageTransient) as info:
        st_.get_bytes(S3Object("calls", "changing.bin"))
    assert info.value.__cause__.response["Error"]["Code"] == "PreconditionFailed"  # type: ignore[union-attr]
    assert st_.get_bytes(S3Object("calls", "changing.bin")) == b"b" * 2000


# --------------------------------------------------------------------------- access


def test_access_denied_by_a_real_iam_policy(s3: S3Server) -> None:
    """moto enforcing IAM: a reader may GetObject in one bucket and nothing else."""
    import boto3

    c = s3.client()
    c.create_bucket(Bucket="private")
    c.put_object(Bucket="private", Key="a.wav", Body=b"secret")
    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::calls/*"}]}  # fmt: skip
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]

    def as_user(access_key: str, secret: str) -> S3Store:
        return S3Store(client=s3.client(aws_access_key_id=access_key, aws_secret_access_key=secret))

    reader = as_user(key["AccessKeyId"], key["SecretAccessKey"])
    s3.enforce_auth(True)
    try:
        assert reader.get_bytes(parse_s3_uri("s3:/" + SAMPLE_PATH)) == SAMPLE.read_bytes()
        denied: list[Callable[[], object]] = [
            lambda: reader.get_bytes(S3Object("private", "a.wav")),  # policy: not this bucket
            lambda: reader.size(S3Object("private", "a.wav")),
            lambda: reader.put_bytes(S3Object("calls", "x.json"), b"{}"),  # policy: read only
            lambda: as_user("AKIAUNKNOWN000000000", "x").put_bytes(S3Object("calls", "x"), b""),
            lambda: as_user(key["AccessKeyId"], "wrong").get_bytes(S3Object("calls", "k")),
        ]
        for attempt in denied:
            with pytest.raises(wm.StorageAccessDenied) as info:
                attempt()
            assert not isinstance(info.value, wm.TransientError)
    finally:
        s3.enforce_auth(False)


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    # the shape botocore's parser builds from an S3 error response
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("AccessDenied", 403), wm.StorageAccessDenied),
        (_client_error("InvalidAccessKeyId", 403), wm.StorageAccessDenied),
        (_client_error("SignatureDoesNotMatch", 403), wm.StorageAccessDenied),
        (_client_error("NoSuchKey", 404), wm.StorageNotFound),
        (_client_error("NoSuchBucket", 404), wm.StorageNotFound),
        (_client_error("SlowDown", 503), wm.StorageTransient),
        (_client_error("RequestTimeout", 400), wm.StorageTransient),
        (_client_error("InternalError", 500), wm.StorageTransient),
        (_client_error("Whatever", 502), wm.StorageTransient),
        (_client_error("InvalidRequest", 400), wm.StorageError),
        (botocore.exceptions.NoCredentialsError(), wm.StorageAccessDenied),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="u"), wm.StorageTransient),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="u"), wm.StorageTransient),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="u"), wm.StorageTransient),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="u"), wm.StorageTransient),
        (botocore.exceptions.ResponseStreamingError(error="e"), wm.StorageTransient),
        (botocore.exceptions.SSLError(endpoint_url="u", error=Exception("e")), wm.StorageError),
        (botocore.exceptions.ParamValidationError(report="r"), wm.StorageError),
    ],
)
def test_map_boto_error(exc: BaseException, expected: type[Exception]) -> None:
    """Shapes moto cannot produce on demand (SlowDown, 5xx), built as botocore builds them."""
    mapped = map_boto_error(exc, uri="s3://calls/k")
    assert type(mapped) is expected
    assert isinstance(mapped, wm.WhisperModalError) and "s3://calls/k" in str(mapped)


# --------------------------------------------------------------------------- writes


def test_result_keys_are_safe() -> None:
    keys = result_keys("s3://out/transcripts/", "fc-01ABC", ["srt", ".VTT", "markdown", "md"])
    assert {k: v.key for k, v in keys.items()} == {
        "json": "transcripts/fc-01ABC/transcript.json",
        "srt": "transcripts/fc-01ABC/transcript.srt",
        "vtt": "transcripts/fc-01ABC/transcript.vtt",
        "md": "transcripts/fc-01ABC/transcript.md",
    }
    assert result_keys("s3://out", "j", [])["json"].key == "j/transcript.json"
    assert result_keys(S3Object("out", "a//b/"), "j")["json"].key == "a/b/j/transcript.json"
    with pytest.raises(wm.ConfigurationError, match="unknown output format"):
        result_keys("s3://out/p/", "job", ["docx"])


@pytest.mark.parametrize(
    "job_id",
    ["../../etc", "a/b", "..", ".", ".hidden", "a\\b", "..\\..\\x", "x\x00y", "x\ny", "",
     "a b", "%2e%2e", "é", "a" * 201],
)  # fmt: skip
def test_path_traversal_in_job_ids_is_rejected(job_id: str) -> None:
    with pytest.raises(wm.ConfigurationError):
        result_keys("s3://out/p/", job_id, [])
    with pytest.raises(wm.ConfigurationError):
        safe_name(job_id)


@pytest.mark.parametrize(
    "prefix", ["s3://out/a/../b/", "s3://out/./b", "s3://out/a\x00", "http://out/p", "s3://OUT/p"]
)
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(wm.ConfigurationError):
        parse_s3_prefix(prefix)


def test_write_results(s3: S3Server) -> None:
    s3.client().create_bucket(Bucket="results")
    t = wm.Transcript(text="hello", language="en", duration=1.0,
                      segments=(wm.Segment(0, 0.0, 1.0, "hello"),))  # fmt: skip
    location = write_results(store(s3), t, "s3://results/out", "job-1", ["srt"])
    assert location == "s3://results/out/job-1/"
    keys = [p for m, p in s3.log if m == "PUT" and p.startswith("/results/out/")]
    assert keys == ["/results/out/job-1/transcript.srt", "/results/out/job-1/transcript.json"]
    got = s3.client().get_object(Bucket="results", Key="out/job-1/transcript.json")
    document = json.loads(got["Body"].read())
    assert got["ContentType"] == "application/json"
    assert document["output_location"] == location and document["text"] == "hello"
    assert wm.Transcript.from_dict(document).text == "hello"
    srt = s3.client().get_object(Bucket="results", Key="out/job-1/transcript.srt")["Body"].read()
    assert srt.decode() == "1\n00:00:00,000 --> 00:00:01,000\nhello\n"
    with pytest.raises(wm.ConfigurationError):
        write_results(store(s3), t, "s3://results/out", "../escape", ["srt"])
    listed = s3.client().list_objects_v2(Bucket="results")["Contents"]
    assert all(o["Key"].startswith("out/job-1/") for o in listed)


# --------------------------------------------------------------------------- memory


def test_peak_memory_reading_an_object(s3: S3Server) -> None:
    """20 MB object: peak Python allocation stays near one copy (ratio < 1.5)."""
    size = 20 * 1024 * 1024
    s3.client().put_object(Bucket="calls", Key="big.bin", Body=b"\x01" * size)
    code = f"""
import tracemalloc, os
os.environ.update({FAKE_AWS_ENV!r})
from whisper_modal.storage import S3Store, S3Object
st = S3Store(endpoint_url={s3.endpoint!r}, region="us-east-1")
st.size(S3Object("calls", "big.bin"))  # warm the client outside the measurement
tracemalloc.start()
data = st.get_bytes(S3Object("calls", "big.bin"))
peak = tracemalloc.get_traced_memory()[1]
print(type(data).__name__, len(data), peak)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    kind, length, peak = out.stdout.split()
    assert kind == "bytes" and int(length) == size
    assert int(peak) / size < 1.5, int(peak) / size


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_s3_in_and_out_through_the_local_backend(s3: S3Server) -> None:
    s3.client().create_bucket(Bucket="delivered")
    client = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu",
                       s3_endpoint_url=s3.endpoint, s3_region="us-east-1")  # fmt: skip
    t = client.transcribe(wm.S3Object("calls", "2026/sample.flac"), language="en",
                          output="s3://delivered/prefix/", formats=["srt", "md"])  # fmt: skip
    assert wer(REFERENCE, t.text) <= 0.10
    assert t.output_location and t.output_location.startswith("s3://delivered/prefix/wm-")
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="delivered")["Contents"]}
    assert {k.rsplit("/", 1)[1] for k in keys} == {
        "transcript.json",
        "transcript.srt",
        "transcript.md",
    }
    with pytest.raises(wm.StorageNotFound):
        client.transcribe("s3://calls/missing.wav")


@pytest.fixture(scope="module")
def s3_deployed(s3: S3Server) -> Iterator[Any]:
    """The app on the emulator of Modal's API (``tests/emulator``), with the object store
    in its secret: its containers read S3 with their own settings and credentials."""
    from tests.emulator.deployed import deploy

    with deploy(secret=s3.sdk_environment()) as d:
        yield d


@pytest.mark.slow
@pytest.mark.emulator
def test_s3_key_through_modal_is_read_by_the_container(
    s3: S3Server, s3_deployed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.emulator.deployed import requests_of

    monkeypatch.delenv("WHISPER_MODAL_S3_ENDPOINT_URL", raising=False)  # the client has none
    client = s3_deployed.sdk(monkeypatch)
    gets = s3.requests_for(SAMPLE_PATH).count("GET")
    t = client.transcribe("s3:/" + SAMPLE_PATH, language="en")
    client.close()
    assert t.backend == "modal" and wer(REFERENCE, t.text) <= 0.10
    assert s3.requests_for(SAMPLE_PATH).count("GET") > gets  # the container fetched it
    sent = [w for _, w in requests_of(s3_deployed) if w.get("s3_uri")]
    assert sent and sent[-1]["s3_uri"] == "s3:/" + SAMPLE_PATH and not sent[-1].get("audio")
