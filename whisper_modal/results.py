"""Typed, immutable transcription results and their one serialisation path.

``Transcript.to_dict()`` is the wire format between the container and the client (and the
JSON writer): plain ``dict``/``list``/``str``/``float`` only, with ``schema_version`` so a
client and a deployed app of different versions still agree. ``from_dict`` accepts any
dict with the same major schema and ignores unknown keys (forward compatible).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from whisper_modal import formats
from whisper_modal.errors import ConfigurationError

__all__ = ["SCHEMA_VERSION", "Segment", "Timings", "Transcript", "Word"]

#: version of the dict produced by ``Transcript.to_dict``; bump on incompatible changes.
#: Speaker fields (``speaker`` on words and segments, ``speakers``, ``diarization_error``)
#: were added within version 1: they are optional, so a reader that ignores them (every
#: older client, since unknown keys are ignored) still reads the transcript correctly.
#: So were ``language`` on segments and ``uncovered_speech``, on the same terms.
SCHEMA_VERSION = 1


def _tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(items)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@attrs.frozen
class Word:
    """One word with its time span in seconds from the start of the audio."""

    start: float = attrs.field(converter=float)  # seconds
    end: float = attrs.field(converter=float)  # seconds
    word: str = attrs.field(converter=str)  # as Whisper emits it, usually with a leading space
    probability: float = 1.0  # model confidence, 0..1
    speaker: str | None = None  # "SPEAKER_00"... when diarized
    channel: int | None = None  # the audio channel (from 0) with ``multichannel=True``

    def to_dict(self) -> dict[str, Any]:
        """Return the word as a plain dict (``speaker``/``channel`` only when set)."""
        d = attrs.asdict(self)
        for optional in ("speaker", "channel"):
            if d[optional] is None:
                del d[optional]  # plain output stays as it was before these existed
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Word:
        """Build a word from ``to_dict`` output."""
        return cls(
            start=float(data["start"]),
            end=float(data["end"]),
            word=str(data["word"]),
            probability=float(data.get("probability", 1.0)),
            speaker=_opt_str(data.get("speaker")),
            channel=_opt_int(data.get("channel")),
        )


@attrs.frozen
class Segment:
    """A stretch of speech Whisper decoded as one unit (usually a sentence or phrase)."""

    id: int
    start: float = attrs.field(converter=float)  # seconds
    end: float = attrs.field(converter=float)  # seconds
    text: str = attrs.field(converter=str)
    words: tuple[Word, ...] = attrs.field(default=(), converter=_tuple)
    avg_logprob: float | None = None  # mean token log-probability
    no_speech_prob: float | None = None  # probability the window held no speech
    compression_ratio: float | None = None  # gzip ratio of the text; high means repetition
    temperature: float | None = None  # sampling temperature that produced the text
    speaker: str | None = None  # "SPEAKER_00"... when diarized (one speaker per segment)
    channel: int | None = None  # the audio channel (from 0) with ``multichannel=True``
    # ISO code of this segment's language, when the transcript holds more than one
    # (speech in another language than the file's, decoded again; see engine/coverage.py)
    language: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the segment as a plain dict (words as a list of dicts)."""
        d = attrs.asdict(self, recurse=False)
        d["words"] = [w.to_dict() for w in self.words]
        for key in ("speaker", "channel", "language"):  # optional: absent keeps older output
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        """Build a segment from ``to_dict`` output (or openai-whisper's segment dict)."""

        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            id=int(data.get("id", 0)),
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data["text"]),
            words=tuple(Word.from_dict(w) for w in data.get("words") or ()),
            avg_logprob=opt("avg_logprob"),
            no_speech_prob=opt("no_speech_prob"),
            compression_ratio=opt("compression_ratio"),
            temperature=opt("temperature"),
            speaker=_opt_str(data.get("speaker")),
            channel=_opt_int(data.get("channel")),
            language=_opt_str(data.get("language")),
        )


def _spans(items: Iterable[Any]) -> tuple[tuple[float, float], ...]:
    return tuple((float(a), float(b)) for a, b in items)


@attrs.frozen
class Timings:
    """Where the time went, in seconds (0.0 when a stage did not run)."""

    load: float = 0.0  # loading the model (0 when it was already loaded)
    decode: float = 0.0  # reading and decoding the audio to 16 kHz samples
    inference: float = 0.0  # running the model
    total: float = 0.0  # wall time of the whole call as seen by the engine
    queue: float = 0.0  # waiting for a container / worker before the engine started
    diarize: float = 0.0  # finding speakers (its model load is counted in ``load``)

    def to_dict(self) -> dict[str, float]:
        """Return the timings as a plain dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timings:
        """Build timings from ``to_dict`` output; missing stages are 0."""
        fields = attrs.fields_dict(cls)
        return cls(**{k: float(v) for k, v in data.items() if k in fields and v is not None})


@attrs.frozen
class Transcript:
    """The result of one transcription.

    Attributes:
        text: the full transcript.
        language: ISO code of the spoken (or given) language.
        duration: length of the audio in seconds.
        segments: time-stamped segments in order.
        model: the Whisper model that produced it.
        backend: "modal" or "local" (or "local-cpu"/"local-cuda" detail in ``device``).
        device: "cuda", "cpu" or the GPU name the engine ran on.
        mode: the decoding that ran, "sequential" or "batched" ("" when not recorded,
            e.g. from an older app version).
        timings: per-stage seconds.
        language_probability: confidence of detected language (None when it was given).
        fallback_reason: why the call ran on a fallback backend, None if it did not.
        cold_start: True when the container loaded the model for this call.
        job_id: the job that produced it, if it came from a job.
        output_location: where the result was stored (e.g. an s3:// URI), if anywhere.
        speakers: speaker labels (``SPEAKER_00``...) in order of first appearance; empty
            unless diarized.
        diarization_error: why diarization was asked for but failed (the transcript is
            then returned without speakers), None otherwise.
        uncovered_speech: (start, end) seconds of speech the VAD found but no segment
            covers, even after decoding it again (empty when everything has text, and
            without the VAD).
    """

    text: str
    language: str
    duration: float
    segments: tuple[Segment, ...] = attrs.field(default=(), converter=_tuple)
    model: str = ""
    backend: str = "local"
    device: str = ""
    mode: str = ""
    timings: Timings = attrs.field(factory=Timings)
    language_probability: float | None = None
    fallback_reason: str | None = None
    cold_start: bool = False
    job_id: str | None = None
    output_location: str | None = None
    speakers: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    diarization_error: str | None = None
    uncovered_speech: tuple[tuple[float, float], ...] = attrs.field(default=(), converter=_spans)

    @property
    def words(self) -> tuple[Word, ...]:
        """All words of all segments, in order (empty unless word timestamps were asked)."""
        return tuple(w for s in self.segments for w in s.words)

    def to_dict(self) -> dict[str, Any]:
        """Return the versioned plain-dict form (the wire and JSON format)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "text": self.text,
            "language": self.language,
            "duration": self.duration,
            "segments": [s.to_dict() for s in self.segments],
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "mode": self.mode,
            "timings": self.timings.to_dict(),
            "language_probability": self.language_probability,
            "fallback_reason": self.fallback_reason,
            "cold_start": self.cold_start,
            "job_id": self.job_id,
            "output_location": self.output_location,
            "speakers": list(self.speakers),
            "diarization_error": self.diarization_error,
            "uncovered_speech": [list(span) for span in self.uncovered_speech],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transcript:
        """Build a transcript from ``to_dict`` output.

        Raises:
            ConfigurationError: the dict has a newer, incompatible ``schema_version``
                (upgrade the client) or misses a required key.
        """
        version = int(data.get("schema_version", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"result schema {version} is newer than this client understands "
                f"({SCHEMA_VERSION}); upgrade whisper-modal"
            )
        try:
            lp = data.get("language_probability")
            return cls(
                text=str(data["text"]),
                language=str(data.get("language") or ""),
                duration=float(data.get("duration") or 0.0),
                segments=tuple(Segment.from_dict(s) for s in data.get("segments") or ()),
                model=str(data.get("model") or ""),
                backend=str(data.get("backend") or "local"),
                device=str(data.get("device") or ""),
                mode=str(data.get("mode") or ""),
                timings=Timings.from_dict(data.get("timings") or {}),
                language_probability=None if lp is None else float(lp),
                fallback_reason=data.get("fallback_reason"),
                cold_start=bool(data.get("cold_start", False)),
                job_id=data.get("job_id"),
                output_location=data.get("output_location"),
                speakers=tuple(str(s) for s in data.get("speakers") or ()),
                diarization_error=_opt_str(data.get("diarization_error")),
                uncovered_speech=_spans(data.get("uncovered_speech") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a transcript dict: {exc!r}") from exc

    # Writers live in formats.py; these are the convenient spellings users expect.
    def to_srt(self) -> str:
        """Return SubRip subtitles."""
        return formats.to_srt(self)

    def to_vtt(self) -> str:
        """Return WebVTT subtitles."""
        return formats.to_vtt(self)

    def to_txt(self) -> str:
        """Return the plain text, one segment per line."""
        return formats.to_txt(self)

    def to_tsv(self) -> str:
        """Return tab-separated ``start\\tend\\ttext`` rows in milliseconds."""
        return formats.to_tsv(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        """Return the ``to_dict`` form as JSON."""
        return formats.to_json(self, indent=indent)

    def to_markdown(self) -> str:
        """Return a Markdown document: full text, timestamped segments, word timings."""
        return formats.to_markdown(self)

    def to_rttm(self, *, file_id: str = "audio") -> str:
        """Return the speaker turns as RTTM (empty unless diarized)."""
        from whisper_modal.formats import to_rttm

        return to_rttm(self, file_id=file_id)

    def _repr_markdown_(self) -> str:
        # Jupyter's rich display: the same document as ``to_markdown``
        return self.to_markdown()

    def _repr_html_(self) -> str:
        # Jupyter's rich display: a table of segments with times and speakers
        from whisper_modal.formats import to_html

        return to_html(self)

    def with_changes(self, **changes: Any) -> Transcript:
        """Return a copy with some fields replaced (results are immutable)."""
        return attrs.evolve(self, **changes)
