"""S3 inputs and outputs against a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

import whisper_modal as wm
from tests.models_cache import tiny_en_cache
from tests.servers import FAKE_AWS_ENV, S3Server, free_port
from tests.wer import wer
from whisper_modal.errors import map_boto_error
from whisper_modal.storage import S3Object, S3Store, parse_s3_uri, result_keys, write_results

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
REFERENCE = (ROOT / "examples" / "sample.txt").read_text()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    mp = pytest.MonkeyPatch()
    for k, v in FAKE_AWS_ENV.items():
        mp.setenv(k, v)
    server = S3Server()
    server.start()
    client = server.client()
    client.create_bucket(Bucket="calls")
    client.create_bucket(Bucket="versioned")
    client.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    client.put_object(Bucket="calls", Key="2026/sample.flac", Body=SAMPLE.read_bytes())
    yield server
    server.stop()
    mp.undo()


def store(s3: S3Server, **kw: Any) -> S3Store:
    return S3Store(endpoint_url=s3.endpoint, region="us-east-1", **kw)


def test_uris_are_parsed_without_network() -> None:
    assert parse_s3_uri("s3://calls/a/b c.wav") == S3Object("calls", "a/b c.wav")
    assert parse_s3_uri("s3://calls/k.wav?versionId=v1").version_id == "v1"
    assert S3Object("calls", "k.wav", "v1").uri == "s3://calls/k.wav?versionId=v1"
    bad = ["http://calls/k", "s3://", "s3://calls", "s3://calls/", "s3://Calls/k", "s3://a/k",
           "s3://bad..bucket/k", "s3://192.168.0.1/k", "s3://calls/a\x00b", "s3://calls/a\nb"]  # fmt: skip
    for uri in bad:
        with pytest.raises(wm.ConfigurationError):
            parse_s3_uri(uri)


def test_malformed_uri_fails_before_any_network(tmp_path: Path) -> None:
    # an endpoint nobody listens on: contacting it would raise StorageTransient instead
    client = wm.Client(backend="local", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(wm.ConfigurationError):
        client.transcribe("s3://NOT_A_BUCKET/key.wav")


def test_get_bytes_streams_into_one_buffer(s3: S3Server) -> None:
    data = store(s3, chunk_size=64 * 1024).get_bytes(parse_s3_uri("s3://calls/2026/sample.flac"))
    assert bytes(data) == SAMPLE.read_bytes()


def test_versions(s3: S3Server) -> None:
    c = s3.client()
    v1 = c.put_object(Bucket="versioned", Key="a.txt", Body=b"one")["VersionId"]
    c.put_object(Bucket="versioned", Key="a.txt", Body=b"two")
    st = store(s3)
    assert bytes(st.get_bytes(S3Object("versioned", "a.txt", v1))) == b"one"
    assert bytes(st.get_bytes(S3Object("versioned", "a.txt"))) == b"two"


def test_missing_objects_are_permanent(s3: S3Server) -> None:
    st = store(s3)
    with pytest.raises(wm.StorageNotFound):
        st.get_bytes(S3Object("calls", "nope.wav"))
    with pytest.raises(wm.StorageNotFound):
        st.get_bytes(S3Object("no-such-bucket", "k.wav"))
    assert not issubclass(wm.StorageNotFound, wm.TransientError)


def test_size_cap_refuses_before_download(s3: S3Server) -> None:
    st = store(s3, max_object_bytes=1000)
    calls: list[str] = []
    st.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    with pytest.raises(wm.StorageTooLarge, match="over the limit"):
        st.get_bytes(parse_s3_uri("s3://calls/2026/sample.flac"))
    assert calls == ["HeadObject"]  # no GetObject was sent


def test_access_denied_mapping() -> None:
    # moto accepts any credentials, so AccessDenied is built from botocore's real error shape.
    for code, status, expected in [
        ("AccessDenied", 403, wm.StorageAccessDenied),
        ("InvalidAccessKeyId", 403, wm.StorageAccessDenied),
        ("NoSuchKey", 404, wm.StorageNotFound),
        ("SlowDown", 503, wm.StorageTransient),
        ("InternalError", 500, wm.StorageTransient),
        ("InvalidRequest", 400, wm.StorageError),
    ]:
        exc = botocore.exceptions.ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "GetObject",
        )
        assert type(map_boto_error(exc)) is expected, code
    assert isinstance(
        map_boto_error(botocore.exceptions.NoCredentialsError()), wm.StorageAccessDenied
    )
    conn = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert isinstance(map_boto_error(conn), wm.StorageTransient)


def test_server_down_is_transient_and_recovers(s3: S3Server) -> None:
    st = store(s3, connect_timeout=1.0, read_timeout=2.0)
    obj = parse_s3_uri("s3://calls/2026/sample.flac")
    assert st.get_bytes(obj)
    s3.stop()
    try:
        with pytest.raises(wm.StorageTransient):
            st.get_bytes(obj)
    finally:
        s3.start()
    assert bytes(st.get_bytes(obj)) == SAMPLE.read_bytes()  # moto keeps state across restarts


def test_result_keys_are_safe() -> None:
    keys = result_keys("s3://out/transcripts/", "fc-01ABC", ["srt", "vtt"])
    assert {k: v.key for k, v in keys.items()} == {
        "json": "transcripts/fc-01ABC/transcript.json",
        "srt": "transcripts/fc-01ABC/transcript.srt",
        "vtt": "transcripts/fc-01ABC/transcript.vtt",
    }
    for job_id in ["../../etc", "a/b", "..", ".hidden", "a\\b", "x\x00y", ""]:
        with pytest.raises(wm.ConfigurationError):
            result_keys("s3://out/p/", job_id, [])
    with pytest.raises(wm.ConfigurationError):
        result_keys("s3://out/a/../b/", "job", [])


def test_write_results(s3: S3Server) -> None:
    s3.client().create_bucket(Bucket="results")
    t = wm.Transcript(text="hello", language="en", duration=1.0,
                      segments=(wm.Segment(0, 0.0, 1.0, "hello"),))  # fmt: skip
    location = write_results(store(s3), t.to_dict(), "s3://results/out", "job-1", ["srt"])
    assert location == "s3://results/out/job-1/"
    body = s3.client().get_object(Bucket="results", Key="out/job-1/transcript.json")["Body"].read()
    assert json.loads(body)["output_location"] == location
    srt = s3.client().get_object(Bucket="results", Key="out/job-1/transcript.srt")["Body"].read()
    assert b"00:00:00,000 --> 00:00:01,000" in srt


@pytest.mark.slow
def test_s3_in_and_out_through_the_local_backend(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
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


@pytest.mark.slow
def test_s3_key_through_the_modal_fake(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes import fake_client
    from tests.fakes.modal_fake import FakeModal

    monkeypatch.setenv("WHISPER_MODAL_S3_ENDPOINT_URL", s3.endpoint)  # the container's setting
    fake = FakeModal()
    try:
        client = fake_client(fake, monkeypatch)
        t = client.transcribe("s3://calls/2026/sample.flac", language="en")
        assert t.backend == "modal" and wer(REFERENCE, t.text) <= 0.10
    finally:
        fake.close()


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
print(len(data), peak)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    length, peak = map(int, out.stdout.split())
    assert length == size
    assert peak / size < 1.5, peak / size
