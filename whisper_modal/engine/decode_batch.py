"""One batched decoder call: openai-whisper's ``DecodingTask`` with a row per stream.

openai-whisper's ``decode`` takes one prompt for the whole batch and decodes every row to
the end of its window. ``decode_with_fallback`` gives each row

* its own prompt (its stream's previous text; prompts in one call are cut to the same
  token length, as the task needs a rectangular token tensor);
* its own stop: a row ends once it emits a timestamp at or past its stream's end, since
  that text belongs to the next stream;
* openai-whisper's temperature fallback, re-decoding only the rows that look like a
  failure, batched, reusing the encoder output.

The decoder loop also computes logits only where it reads them (see ``_needed_logits``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from whisper_modal.options import TranscribeOptions

from .models import LoadedModel

__all__ = ["N_FRAMES", "decode_with_fallback", "is_no_speech"]

N_FRAMES = 3000  # mel frames in Whisper's 30 s window
INPUT_STRIDE = 2  # mel frames per timestamp token (one token per 0.02 s)


@functools.cache
def _prompted_task() -> Any:
    from .fast_decode import fast_task_class

    class PromptedTask(fast_task_class()):  # type: ignore[misc]
        """openai-whisper's DecodingTask with one prompt and one stop per batch row.

        Greedy fp32 decoding runs ``fast_decode``'s inference-only loop (the same tokens
        as openai-whisper's); beam search, fp16 and the int8 copy run ``_stock_loop``.
        """

        def __init__(
            self, model: Any, options: Any, prompts: list[list[int]], limits: list[int]
        ) -> None:
            super().__init__(model, options)
            self.prompts = prompts
            self.stop: _StopAfterTimestamp | None = None
            if any(limit < N_FRAMES // INPUT_STRIDE for limit in limits):
                self.stop = _StopAfterTimestamp(
                    self.tokenizer, self.sample_begin, limits, self.n_group, model.device
                )

        def _main_loop(self, audio_features: Any, tokens: Any) -> Any:
            import torch

            if self.prompts and self.prompts[0]:
                # the initial tokens are [sot_prev, *prompt, sot, ...]: replace the prompt
                rows = torch.tensor(self.prompts, device=tokens.device)
                rows = rows.repeat_interleave(self.n_group, dim=0)
                tokens = tokens.clone()
                tokens[:, 1 : 1 + rows.shape[1]] = rows
            stops = None if self.stop is None else self.stop.stops.tolist()
            result = self.fast_main_loop(audio_features, tokens, stops)
            return self._stock_loop(audio_features, tokens) if result is None else result

        def _stock_loop(self, audio_features: Any, tokens: Any) -> Any:
            """openai-whisper's ``DecodingTask._main_loop``, with two changes.

            Logits are computed only where the loop reads them (the last position, and
            the start-of-transcript position for the no-speech probability):
            openai-whisper projects every prompt position onto the 51,864-token
            vocabulary in the first step, which was ~10% of CPU decoding time with
            200-token prompts. Each row's stop filter runs last, after
            ApplyTimestampRules (which may mask EOT). The loop is otherwise the same.
            """
            import torch

            filters = [*self.logit_filters, *([self.stop] if self.stop else [])]
            n_batch = tokens.shape[0]
            sum_logprobs = torch.zeros(n_batch, device=audio_features.device)
            no_speech_probs = [np.nan] * n_batch
            try:
                for i in range(self.sample_len):
                    first = i == 0 and self.tokenizer.no_speech is not None
                    logits = _needed_logits(
                        self.inference, tokens, audio_features, self.sot_index if first else None
                    )
                    if first:
                        probs_at_sot = logits[:, 0].float().softmax(dim=-1)
                        no_speech_probs = probs_at_sot[:, self.tokenizer.no_speech].tolist()
                    logits = logits[:, -1]
                    for logit_filter in filters:
                        logit_filter.apply(logits, tokens)
                    tokens, completed = self.decoder.update(tokens, logits, sum_logprobs)
                    if completed or tokens.shape[-1] > self.n_ctx:
                        break
            finally:
                self.inference.cleanup_caching()
            return tokens, sum_logprobs, no_speech_probs

    return PromptedTask


class _StopAfterTimestamp:
    """A logit filter: a row ends (EOT) once it emits a timestamp at or past its limit.

    ``limits[row]`` is a timestamp index (0.02 s steps from the window start): where the
    row's stream ends. Text past it belongs to the next stream and would be dropped, so
    decoding it would only cost time.
    """

    def __init__(
        self, tokenizer: Any, sample_begin: int, limits: list[int], n_group: int, device: Any
    ):
        import torch

        self.eot, self.sample_begin = tokenizer.eot, sample_begin
        # the first stopping token of each row, on the device once (this runs every step)
        stops = torch.tensor(limits, device=device) + tokenizer.timestamp_begin
        self.stops = stops.repeat_interleave(n_group)

    def apply(self, logits: Any, tokens: Any) -> None:
        if tokens.shape[1] <= self.sample_begin:
            return
        done = (tokens[:, -1] >= self.stops).nonzero().flatten().tolist()
        for row in done:
            logits[row, :] = -np.inf
            logits[row, self.eot] = 0.0


def _needed_logits(inference: Any, tokens: Any, audio_features: Any, sot_index: int | None) -> Any:
    """``PyTorchInference.logits``, projecting only the last (and ``sot_index``) position.

    The same arithmetic as openai-whisper's ``TextDecoder.forward`` per position: layer
    norm and the tied output projection act on each position alone.
    """
    if not inference.kv_cache:
        inference.kv_cache, inference.hooks = inference.model.install_kv_cache_hooks()
    if tokens.shape[-1] > inference.initial_token_length:
        tokens = tokens[:, -1:]  # after the first pass the cache holds the rest
    decoder, cache = inference.model.decoder, inference.kv_cache
    offset = next(iter(cache.values())).shape[1] if cache else 0
    x = decoder.token_embedding(tokens)
    x = (x + decoder.positional_embedding[offset : offset + tokens.shape[-1]]).to(
        audio_features.dtype
    )
    for block in decoder.blocks:
        x = block(x, audio_features, mask=decoder.mask, kv_cache=cache)
    last = x.shape[1] - 1
    x = decoder.ln(x[:, [last] if sot_index is None else [sot_index, last]])
    head = getattr(decoder, "int8_head", None)  # quantize.int8_model's projection
    if head is not None:
        return head(x).float()
    return (x @ decoder.token_embedding.weight.to(x.dtype).T).float()


def _decode(
    loaded: LoadedModel,
    features: Any,
    prompts: list[list[int]],
    limits: list[int],
    options: TranscribeOptions,
    language: str,
    temperature: float,
) -> list[Any]:
    import torch
    import whisper

    length = min(len(p) for p in prompts)
    rows = [p[len(p) - length :] for p in prompts]
    decode_options = whisper.DecodingOptions(
        task=options.task,
        language=language,
        temperature=temperature,
        # as in openai-whisper: beam search at temperature 0, best-of sampling above it
        beam_size=options.beam_size if temperature == 0 else None,
        best_of=options.best_of if temperature > 0 else None,
        prompt=rows[0] if length else None,
        fp16=features.dtype == torch.float16,  # as the encoder ran (precision fp16)
    )
    with torch.no_grad():  # whisper.decode() does this; DecodingTask.run() alone does not
        task = _prompted_task()(loaded.model, decode_options, rows, limits)
        results: list[Any] = task.run(features)
    return results


def _needs_fallback(result: Any, options: TranscribeOptions) -> bool:
    """openai-whisper's rule: too repetitive or too unlikely, unless it is silence."""
    if is_no_speech(result, options):
        return False
    ratio, logprob = options.compression_ratio_threshold, options.logprob_threshold
    return bool(
        (ratio is not None and result.compression_ratio > ratio)
        or (logprob is not None and result.avg_logprob < logprob)
    )


def is_no_speech(result: Any, options: TranscribeOptions) -> bool:
    """openai-whisper's no-speech rule: likely silence and an unlikely decoding."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob < options.logprob_threshold


def decode_with_fallback(
    loaded: LoadedModel,
    features: Any,
    prompts: list[list[int]],
    limits: list[int],
    options: TranscribeOptions,
    language: str,
) -> list[Any]:
    """Decode a batch; re-decode only the failures, batched, at each next temperature."""
    results: list[Any] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for temperature in options.temperature:
        # rows with a prompt and rows without cannot share one call (equal prompt lengths)
        for group in ([i for i in pending if prompts[i]], [i for i in pending if not prompts[i]]):
            if group:
                decoded = _decode(
                    loaded, features[group], [prompts[i] for i in group],
                    [limits[i] for i in group], options, language,
                    temperature,
                )  # fmt: skip
                for i, result in zip(group, decoded, strict=True):
                    results[i] = result
        pending = [i for i in pending if _needs_fallback(results[i], options)]
        if not pending:
            break
    return results
