"""Options and settings: validation, the resolution order, the wire round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_modal.config import Settings
from whisper_modal.errors import ConfigurationError
from whisper_modal.options import KNOWN_MODELS, TranscribeOptions
from whisper_modal.wire import WIRE_VERSION, Request


def test_options_round_trip_and_defaults() -> None:
    opts = TranscribeOptions(model="tiny.en", temperature=0, beam_size=5, word_timestamps=True)
    assert opts.temperature == (0.0,)
    assert TranscribeOptions.from_dict(opts.to_dict()) == opts
    assert TranscribeOptions().temperature == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert opts.replace(language="en").language == "en"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": ""}, "model"),
        ({"language": "klingon"}, "unknown language"),
        ({"task": "summarise"}, "task"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": ()}, "temperature"),
        ({"beam_size": 0}, "beam_size"),
        ({"best_of": True}, "best_of"),
        ({"mode": "turbo"}, "mode"),
        ({"initial_prompt": "x" * 5000}, "initial_prompt"),
        ({"no_speech_threshold": float("nan")}, "no_speech_threshold"),
        ({"model": "tiny.en", "language": "de"}, "English-only"),
        ({"model": "base.en", "task": "translate"}, "cannot translate"),
    ],
)
def test_bad_options_are_typed(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        TranscribeOptions(**kwargs)  # type: ignore[arg-type]


def test_unknown_wire_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown transcription option"):
        TranscribeOptions.from_dict({"model": "tiny", "rm_rf": True})


def test_settings_resolution_order(tmp_path: Path) -> None:
    env = {
        "WHISPER_MODAL_MODEL": "base",
        "WHISPER_MODAL_CACHE_DIR": str(tmp_path),
        "WHISPER_MODAL_ALLOW_CPU_FALLBACK": "yes",
        "WHISPER_MODAL_CALL_TIMEOUT": "2.5",
        "WHISPER_MODAL_MAX_ATTEMPTS": "7",
    }
    s = Settings.resolve(env=env, model="tiny.en")
    assert s.model == "tiny.en"  # argument beats environment
    assert s.cache_dir == tmp_path  # environment beats default
    assert s.allow_cpu_fallback is True and s.call_timeout == 2.5 and s.max_attempts == 7
    assert Settings.resolve(env={}).model == "turbo"  # default
    assert "hunter2" not in repr(Settings.resolve(env={"WHISPER_MODAL_WEBHOOK_SECRET": "hunter2"}))


@pytest.mark.parametrize(
    "env",
    [
        {"WHISPER_MODAL_CALL_TIMEOUT": "soon"},
        {"WHISPER_MODAL_CALL_TIMEOUT": "-1"},
        {"WHISPER_MODAL_ALLOW_CPU_FALLBACK": "maybe"},
        {"WHISPER_MODAL_BACKEND": "cloud"},
        {"WHISPER_MODAL_DEVICE": "tpu"},
    ],
)
def test_bad_settings_are_typed(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.resolve(env=env)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Settings.resolve(env={}, colour="blue")


def test_a_typo_is_typed_and_says_what_was_meant() -> None:
    """Before: ``TranscribeOptions(langauge="en")`` was a bare ``TypeError`` and
    ``transcribe(lang="en")`` said "unknown argument(s): lang" with no suggestion."""
    import whisper_modal as wm
    from whisper_modal.inputs import prepare

    cases = [
        (lambda: TranscribeOptions(langauge="en"), "unknown option: 'langauge' (did you mean 'language'?)"),
        (lambda: TranscribeOptions().replace(temprature=0.0), "did you mean 'temperature'?"),
        (lambda: Settings(modle="tiny.en"), "unknown setting: 'modle' (did you mean 'model'?)"),
        (lambda: Settings.resolve(env={}, gpuu="T4"), "did you mean 'gpu'?"),
        (lambda: prepare(b"RIFF", default_model="tiny.en", max_bytes=None, lang="en"), "unknown argument: 'lang' (did you mean 'language'?)"),
        (lambda: wm.transcribe(b"RIFF", backend="local", wordtimestamps=True), "'word_timestamps'"),
    ]  # fmt: skip
    for make, expected in cases:
        with pytest.raises(ConfigurationError) as info:
            make()
        assert expected in str(info.value), info.value
    with pytest.raises(ConfigurationError) as info:
        TranscribeOptions(xyzzy=1)  # nothing close: the accepted names are listed
    assert "accepted: beam_size, " in str(info.value) and "language" in str(info.value)
    assert TranscribeOptions(language="en").language == "en"  # known names still work


@pytest.mark.slow
def test_a_missing_checkpoint_path_says_so_on_the_local_backend(tmp_path: Path) -> None:
    """Before: "unknown model '/x/model.pt'; known: ..." with no word about the path (and
    earlier an IndexError from inside the engine)."""
    import whisper_modal as wm

    sample = Path(__file__).parents[1] / "examples" / "sample.flac"
    with wm.Client(backend="local", device="cpu") as client:
        for model, why in (
            (str(tmp_path / "model.pt"), "does not exist"),
            (str(tmp_path), "is a directory"),
        ):
            with pytest.raises(ConfigurationError) as info:
                client.transcribe(sample, model=model)
            assert "looks like a checkpoint path" in str(info.value) and why in str(info.value)


def test_request_wire_round_trip_and_validation() -> None:
    opts = TranscribeOptions(model="tiny.en")
    req = Request(options=opts, audio=b"RIFF....", formats=["srt"], client_job_id="wm-1")
    wire = req.to_wire()
    assert wire["wire_version"] == WIRE_VERSION
    assert set(type(v).__name__ for v in wire.values()) <= {
        "int",
        "dict",
        "bytes",
        "NoneType",
        "list",
        "str",
    }
    assert Request.from_wire(wire) == req
    assert "public_job_id" not in wire  # unset: off the wire, as apps deployed before read it
    named = Request(options=opts, audio=b"x", public_job_id="job_1")
    assert Request.from_wire(named.to_wire()) == named
    assert "RIFF" not in repr(req)
    with pytest.raises(ConfigurationError, match="exactly one"):
        Request(options=opts)
    with pytest.raises(ConfigurationError, match="exactly one"):
        Request(options=opts, audio=b"x", s3_uri="s3://b/k")
    with pytest.raises(ConfigurationError, match="newer"):
        Request.from_wire({**wire, "wire_version": WIRE_VERSION + 1})
    with pytest.raises(ConfigurationError, match="webhook_url"):
        Request(options=opts, audio=b"x", webhook_url="file:///etc/passwd")


def test_known_models_match_openai_whisper() -> None:
    import whisper

    assert set(KNOWN_MODELS) == set(whisper.available_models())
