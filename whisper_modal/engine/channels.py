"""Per-channel transcription (``multichannel=True``): one transcript per channel, merged.

Call-centre and interview recordings put one speaker on each channel; mixing them to mono
(what Whisper does) loses a speaker wherever the two talk at once. The engine transcribes
each channel as its own mono stream (``Engine.transcribe`` with the channel's samples)
and ``merge_channels`` interleaves the results by time:

* every segment and word carries ``channel`` (0, 1, ...);
* without diarization each channel is a speaker, ``SPEAKER_00`` for channel 0 and so on;
  with ``diarize=True`` each channel is diarized on its own and its speakers are named
  ``CH0_SPEAKER_00``, ``CH1_SPEAKER_00``, ... (more than one speaker per channel);
* segment ids are renumbered in time order, the text is the segments' text in that order,
  timings add up (the channels ran one after another), the language is the first
  channel's that has any text.
"""

from __future__ import annotations

import attrs

from whisper_modal.results import Segment, Timings, Transcript

__all__ = ["channel_speaker", "merge_channels"]


def channel_speaker(channel: int, speaker: str | None, *, diarized: bool) -> str:
    """The label of ``speaker`` (a per-channel diarization label) on ``channel``."""
    if diarized and speaker is not None:
        return f"CH{channel}_{speaker}"
    return f"SPEAKER_{channel:02d}"


def _on_channel(segment: Segment, channel: int, diarized: bool) -> Segment:
    who = channel_speaker(channel, segment.speaker, diarized=diarized)
    words = tuple(
        attrs.evolve(
            w, channel=channel, speaker=channel_speaker(channel, w.speaker, diarized=diarized)
        )
        for w in segment.words
    )
    return attrs.evolve(segment, channel=channel, speaker=who, words=words)


def merge_channels(parts: list[Transcript], *, diarized: bool) -> Transcript:
    """One transcript from per-channel transcripts (``parts[c]`` is channel ``c``)."""
    labelled = [
        (_on_channel(seg, channel, diarized), channel)
        for channel, part in enumerate(parts)
        for seg in part.segments
    ]
    labelled.sort(key=lambda item: (item[0].start, item[1]))
    segments = tuple(attrs.evolve(seg, id=i) for i, (seg, _) in enumerate(labelled))
    speakers: list[str] = []
    for seg in segments:
        if seg.speaker is not None and seg.speaker not in speakers:
            speakers.append(seg.speaker)
    spoken = next((p for p in parts if p.text.strip()), parts[0])
    errors = [
        f"channel {c}: {p.diarization_error}" for c, p in enumerate(parts) if p.diarization_error
    ]
    timings = Timings(
        **{
            name: sum(getattr(p.timings, name) for p in parts)
            for name in attrs.fields_dict(Timings)
        }
    )
    return parts[0].with_changes(
        text=" ".join(" ".join(s.text.split()) for s in segments if s.text.strip()),
        segments=segments,
        speakers=tuple(speakers),
        language=spoken.language,
        language_probability=spoken.language_probability,
        duration=max(p.duration for p in parts),
        timings=timings,
        diarization_error="; ".join(errors) or None,
        cold_start=any(p.cold_start for p in parts),
        # speech without text on any channel, in time order
        uncovered_speech=tuple(sorted(span for p in parts for span in p.uncovered_speech)),
    )
