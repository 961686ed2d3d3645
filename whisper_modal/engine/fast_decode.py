"""openai-whisper's greedy decoding loop, written for inference: same tokens, less work.

``whisper.transcribe`` spends most of its CPU time in ``DecodingTask._main_loop``. At
batch 1 a stock decoder step (tiny.en, 2-core CPU) took ~21 ms, half of it the
51,864 x 384 logits projection, which MKL reads slowly in openai-whisper's ``out x in``
layout (~10 ms; ~5 ms from an ``in x out`` copy); the rest is ~200 small ops through
``nn.Module`` calls, hooks that grow the key/value cache by ``torch.cat``, and logit
filters that index with Python lists. This loop's step took ~13 ms on the same machine.

``FastDecodingTask`` keeps openai-whisper's model, weights and ``DecodingTask`` (options,
initial tokens, encoder, ranking, results) and replaces the main loop:

* the self-attention key/value cache is preallocated and written in place;
* cross-attention keys/values are computed once per window, as stock does;
* the blocks call ``torch`` functions directly on weights stored transposed
  (``_Weights``), with query/key/value in one matmul;
* the first step projects only the positions the loop reads (the last one and the
  no-speech position), not every prompt token;
* the logit filters are the same rules on precomputed masks and Python-side state
  (last tokens, last timestamp) instead of per-step ``tolist()`` and list indexing, and
  the timestamp rule's ``log_softmax`` is reused when that rule left the logits as they
  were.

The float results differ from stock's in the last bits (other matmul kernels; stock's own
differ as much between thread counts), so the tokens are the same unless two logits tie to
~1e-6: tests/test_fast_decode.py checks text, segments and word times against stock. The
loop keeps torch's thread setting, as stock does.

``fast_model(model)`` returns a view of a Whisper model whose ``decode`` runs this task;
``whisper.transcribe(fast_model(model), ...)`` is then stock's loop with this decoder.
Nothing in openai-whisper is patched: other callers of the same model keep stock code.
Beam search, fp16 (weights cast per op) and unknown logit filters run stock's loop.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import numpy as np

from .turns import handover_point

__all__ = ["fast_model", "fast_task_class"]


def fast_model(model: Any) -> Any:
    """A view of openai-whisper ``model`` whose ``decode`` uses ``FastDecodingTask``.

    Args:
        model: a loaded ``whisper.model.Whisper``.

    Returns:
        An object that behaves as ``model`` (attributes and calls are delegated) except
        that ``decode(mel, options)`` runs the inference-only loop. The model itself is
        not modified, so it stays safe to share between threads and callers.
    """
    return _FastModel(model)


class _FastModel:
    """Delegates everything to a Whisper model; ``decode`` runs ``FastDecodingTask``."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._model(*args, **kwargs)

    def decode(self, mel: Any, options: Any = None, **kwargs: Any) -> Any:
        """``whisper.decode`` with the fast task; same arguments and results."""
        import dataclasses

        import torch
        from whisper.decoding import DecodingOptions

        handover_point()  # between windows: hand the model over, or stop (engine.turns)
        options = options if options is not None else DecodingOptions()
        if kwargs:
            options = dataclasses.replace(options, **kwargs)
        single = mel.ndim == 2
        if single:
            mel = mel.unsqueeze(0)
        with torch.no_grad():
            result = fast_task_class()(self._model, options).run(mel)
        return result[0] if single else result


class _Dense:
    """``x @ weight.T + bias`` with the weight stored transposed and contiguous (``in x out``).

    At a few rows per step a decoder step is bound by reading weights from memory, and on
    the CPUs measured here MKL reads an ``in x out`` matrix about twice as fast as
    openai-whisper's ``out x in`` (the 51,864-way logits projection of tiny.en at one row:
    ~5 ms against ~10 ms per step).
    """

    __slots__ = ("bias", "weight_t")

    def __init__(self, weight: Any, bias: Any | None) -> None:
        self.weight_t = weight.detach().t().contiguous()
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: Any) -> Any:
        import torch

        return x @ self.weight_t if self.bias is None else torch.addmm(self.bias, x, self.weight_t)


class _Logits(_Dense):
    """The tied output projection in fp32: oneDNN's matmul at several rows, MKL's at one.

    At a few rows MKL's fp32 GEMM reads the 51,864 x d matrix slowly on the AMD EPYC
    measured here (10.6-12 ms at 5 rows for tiny.en, against 3.3 ms at one row); oneDNN's
    took 5.2-6.2 ms. Batched streams and best-of sampling decode several rows per step.
    Costs a second copy of the matrix (80 MB for tiny.en) where oneDNN is available.
    """

    __slots__ = ("weight_mkldnn",)

    def __init__(self, weight: Any) -> None:
        import torch

        super().__init__(weight, None)
        self.weight_mkldnn = None
        if torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            try:
                self.weight_mkldnn = weight.detach().float().contiguous().to_mkldnn()
            except RuntimeError:  # a build without oneDNN's CPU kernels: MKL it is
                self.weight_mkldnn = None

    def __call__(self, x: Any) -> Any:
        import torch

        if self.weight_mkldnn is None or x.shape[0] == 1:
            return x @ self.weight_t
        product = torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight_mkldnn, None)
        return product.to_dense()


class _Weights:
    """A decoder's parameters laid out for few-row steps, built once per model and kind.

    Every linear layer is a ``_Dense`` (fp32, the same math as openai-whisper's) or, for
    ``int8``, a ``quantize.Int8Linear``. Self-attention's query, key and value share one matrix (one
    product, not three; with per-row int8 scales that is the same as three). The fp32
    copies cost as much memory as the decoder (113 MB for tiny.en), the int8 ones a
    quarter of it.
    """

    def __init__(self, decoder: Any, int8: bool = False) -> None:
        import torch

        from .quantize import Int8Linear

        linear: Any = Int8Linear if int8 else _Dense

        def ln(m: Any) -> tuple[Any, Any, float]:
            return (m.weight.detach(), m.bias.detach(), float(m.eps))

        self.embedding = decoder.token_embedding.weight.detach()
        # logits: the tied output projection
        self.head = Int8Linear(self.embedding, None) if int8 else _Logits(self.embedding)
        self.positions = decoder.positional_embedding.detach()
        self.ln = ln(decoder.ln)
        self.n_head = int(decoder.blocks[0].attn.n_head)
        self.blocks: list[tuple[Any, ...]] = []
        for block in decoder.blocks:
            attn, cross, mlp = block.attn, block.cross_attn, block.mlp
            qkv = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
            # the key projection has no bias: a zero one adds exactly nothing
            qkv_bias = torch.cat(
                [attn.query.bias, torch.zeros_like(attn.query.bias), attn.value.bias]
            )
            self.blocks.append(
                (
                    ln(block.attn_ln),
                    linear(qkv, qkv_bias),
                    linear(attn.out.weight, attn.out.bias),
                    ln(block.cross_attn_ln),
                    linear(cross.query.weight, cross.query.bias),
                    linear(cross.out.weight, cross.out.bias),
                    ln(block.mlp_ln),
                    linear(mlp[0].weight, mlp[0].bias),
                    linear(mlp[2].weight, mlp[2].bias),
                )
            )
        # cross-attention key/value weights, applied with F.linear as openai-whisper's Linear
        # does (fp32); not through the modules, whose forward hooks a stock decode running
        # in another thread on the same model may have installed (its key/value cache)
        self.cross = [
            (
                block.cross_attn.key.weight.detach(),
                block.cross_attn.value.weight.detach(),
                block.cross_attn.value.bias.detach(),
            )
            for block in decoder.blocks
        ]
        self.cross_int8 = (
            [
                (linear(key, None), linear(value, value_bias))
                for key, value, value_bias in self.cross
            ]
            if int8
            else None
        )


_WEIGHTS: weakref.WeakKeyDictionary[Any, dict[bool, _Weights]] = weakref.WeakKeyDictionary()
_WEIGHTS_LOCK = threading.Lock()


def _weights(decoder: Any, int8: bool = False) -> _Weights:
    """``_Weights`` of ``decoder``, made on first use (one copy per model, kind and process)."""
    with _WEIGHTS_LOCK:
        kinds = _WEIGHTS.setdefault(decoder, {})
        weights = kinds.get(int8)
        if weights is None:
            weights = kinds[int8] = _Weights(decoder, int8)
        return weights


def _plain_fp32(decoder: Any, dtype: Any) -> bool:
    """Whether ``decoder`` is openai-whisper's own fp32 ``TextDecoder``, unmodified.

    Quantised copies (``engine.quantize``) swap the linear layers and ``forward``; fp16
    decoding casts weights per op. Those keep openai-whisper's loop.
    """
    import torch
    from whisper.model import Linear

    if "forward" in vars(decoder) or dtype != torch.float32:
        return False
    weight = decoder.token_embedding.weight
    if weight.dtype != torch.float32:
        return False
    for block in decoder.blocks:
        if block.cross_attn is None:
            return False
        attn, cross, mlp = block.attn, block.cross_attn, block.mlp
        linears = [attn.query, attn.key, attn.value, attn.out, cross.query, cross.key]
        linears += [cross.value, cross.out, mlp[0], mlp[2]]
        if not all(type(m) is Linear for m in linears):
            return False
    return True


@functools.cache
def fast_task_class() -> Any:
    """``FastDecodingTask``, built on first use so importing this module needs no torch."""
    import torch
    import torch.nn.functional as F  # noqa: N812 (torch's own spelling)
    from whisper.decoding import (
        ApplyTimestampRules,
        DecodingTask,
        GreedyDecoder,
        SuppressBlank,
        SuppressTokens,
    )

    class FastDecodingTask(DecodingTask):  # type: ignore[misc]
        """openai-whisper's ``DecodingTask`` with an inference-only greedy main loop."""

        def _main_loop(self, audio_features: Any, tokens: Any) -> Any:
            result = self.fast_main_loop(audio_features, tokens)
            return super()._main_loop(audio_features, tokens) if result is None else result

        def fast_main_loop(
            self, audio_features: Any, tokens: Any, stops: list[int] | None = None
        ) -> Any:
            """The inference-only loop, or None where it does not apply (then run stock's).

            ``stops[row]``, when given, is a token id: the row ends (EOT) once its last
            sampled token is at or past it, after the other filters have run (the batched
            loop's per-stream end, ``decode_batch``).
            """
            known = (SuppressBlank, SuppressTokens, ApplyTimestampRules)
            # the int8 twin (engine.quantize) keeps the fp32 decoder it was made from
            source = getattr(self.model, "fp32_decoder", None)
            decoder = self.model.decoder if source is None else source
            if not (
                isinstance(self.decoder, GreedyDecoder)
                and all(type(f) in known for f in self.logit_filters)
                and _plain_fp32(decoder, audio_features.dtype)
            ):
                return None
            with torch.inference_mode():
                weights = _weights(decoder, int8=source is not None)
                return _Loop(self, weights, audio_features, tokens, stops).run()

    class _Loop:
        """One window's decoding state: caches, masks and the tokens so far."""

        def __init__(
            self,
            task: Any,
            weights: _Weights,
            audio_features: Any,
            tokens: Any,
            stops: list[int] | None,
        ) -> None:
            self.task = task
            self.stops = stops
            self.tokenizer = task.tokenizer
            self.temperature = float(task.options.temperature)
            self.eot = int(self.tokenizer.eot)
            self.n_ctx = int(task.n_ctx)
            w = self.w = weights
            rows, n_initial = tokens.shape
            self.rows = rows
            self.n_state = int(w.embedding.shape[1])
            # cross-attention keys/values, once per window as stock computes them, laid out
            # per head and contiguous: SDPA read the strided view ~3x slower at 5 rows. A
            # generator, so each block's projections are dropped once laid out (a list held
            # every block's twice: +147 MB at 8 rows of tiny.en)
            if w.cross_int8 is None:
                pairs = (
                    (F.linear(audio_features, key, None), F.linear(audio_features, v, v_bias))
                    for key, v, v_bias in w.cross
                )
            else:
                flat = audio_features.reshape(-1, audio_features.shape[-1])
                pairs = (
                    (key(flat).view_as(audio_features), v(flat).view_as(audio_features))
                    for key, v in w.cross_int8
                )
            self.cross = [
                (self._heads(k).contiguous(), self._heads(v).contiguous()) for k, v in pairs
            ]
            # the self-attention cache, per head: (rows, heads, context, state / heads)
            size = (rows, w.n_head, self.n_ctx, self.n_state // w.n_head)
            self.keys = [audio_features.new_empty(size) for _ in w.blocks]
            self.values = [audio_features.new_empty(size) for _ in w.blocks]
            self.tokens = tokens.new_empty((rows, self.n_ctx + 1))
            self.tokens[:, :n_initial] = tokens
            self.length = n_initial

        def _heads(self, x: Any) -> Any:
            """(rows, n, state) -> (rows, heads, n, state / heads), a view."""
            return x.view(x.shape[0], x.shape[1], self.w.n_head, -1).transpose(1, 2)

        def forward(self, offset: int, n: int, positions: list[int]) -> Any:
            """Logits at ``positions`` of tokens ``[offset, offset + n)``, caching their
            keys/values; shape (rows, len(positions), vocabulary)."""
            w, rows, d = self.w, self.rows, self.n_state
            end = offset + n
            x = F.embedding(self.tokens[:, offset:end], w.embedding) + w.positions[offset:end]
            x = x.reshape(rows * n, d)
            for (ln1, qkv, out, ln2, cq, co, ln3, fc1, fc2), keys, values, (ck, cv) in zip(
                w.blocks, self.keys, self.values, self.cross, strict=True
            ):
                h = F.layer_norm(x, (d,), *ln1)
                qkv_rows = qkv(h).view(rows, n, 3 * d)
                q, k, v = (self._heads(qkv_rows[..., j * d : (j + 1) * d]) for j in range(3))
                keys[:, :, offset:end] = k
                values[:, :, offset:end] = v
                a = F.scaled_dot_product_attention(
                    q,
                    keys[:, :, :end],
                    values[:, :, :end],
                    is_causal=n > 1,  # n > 1 only in the first call, from position 0
                )
                x = x + out(a.transpose(1, 2).reshape(rows * n, d))
                h = F.layer_norm(x, (d,), *ln2)
                q = cq(h).view(rows, n, d)
                a = F.scaled_dot_product_attention(self._heads(q), ck, cv)
                x = x + co(a.transpose(1, 2).reshape(rows * n, d))
                h = F.layer_norm(x, (d,), *ln3)
                x = x + fc2(F.gelu(fc1(h)))
            if positions != [n - 1]:  # project only the positions the loop reads
                x = x.view(rows, n, d)[:, positions].reshape(rows * len(positions), d)
            x = F.layer_norm(x, (d,), *w.ln)
            return w.head(x).view(rows, len(positions), -1)

        def run(self) -> tuple[Any, Any, list[float]]:
            task = self.task
            tokenizer = self.tokenizer
            rows = self.rows
            sum_logprobs = torch.zeros(rows, device=self.tokens.device)
            no_speech_probs: list[float] = [np.nan] * rows
            always, first_mask, max_initial, timestamp_rules = self._filters()
            timestamp_begin = int(tokenizer.timestamp_begin)
            eot = self.eot
            sample_begin = int(task.sample_begin)
            # per row, what the timestamp rules read: the last two sampled tokens and the
            # last sampled timestamp (openai-whisper recomputes them from the tokens)
            last: list[int] = [-1] * rows
            penultimate: list[int] = [-1] * rows
            last_timestamp: list[int | None] = [None] * rows
            arange = torch.arange(rows)
            offset = 0
            for i in range(task.sample_len):
                handover_point()  # between tokens: this loop leaves the model untouched
                n = self.length - offset
                first = i == 0 and tokenizer.no_speech is not None
                positions = [task.sot_index - offset, n - 1] if first else [n - 1]
                logits = self.forward(offset, n, positions)
                offset = self.length
                if first:
                    probs_at_sot = logits[:, 0].softmax(dim=-1)
                    no_speech_probs = probs_at_sot[:, tokenizer.no_speech].tolist()
                logits = logits[:, -1]
                sampled = self.length - sample_begin  # tokens sampled so far
                logits.masked_fill_(first_mask if sampled == 0 else always, -np.inf)
                logprobs = None
                if timestamp_rules:
                    for k in range(rows):
                        row = logits[k]
                        last_ts = sampled >= 1 and last[k] >= timestamp_begin
                        penultimate_ts = sampled < 2 or penultimate[k] >= timestamp_begin
                        if last_ts:
                            if penultimate_ts:  # has to be non-timestamp
                                row[timestamp_begin:] = -np.inf
                            else:  # cannot be normal text tokens
                                row[:eot] = -np.inf
                        stamp = last_timestamp[k]
                        if stamp is not None:  # timestamps do not decrease
                            bound = stamp if last_ts and not penultimate_ts else stamp + 1
                            row[timestamp_begin:bound] = -np.inf
                    if sampled == 0:
                        logits[:, :timestamp_begin] = -np.inf
                        if max_initial is not None:
                            logits[:, timestamp_begin + max_initial + 1 :] = -np.inf
                    logprobs = F.log_softmax(logits, dim=-1)
                    stamp_logprob = logprobs[:, timestamp_begin:].logsumexp(dim=-1)
                    text_logprob = logprobs[:, :timestamp_begin].max(dim=-1).values
                    forced = (stamp_logprob > text_logprob).tolist()
                    if any(forced):
                        for k, force in enumerate(forced):
                            if force:
                                logits[k, :timestamp_begin] = -np.inf
                        logprobs = None  # the logits changed
                if self.stops is not None and sampled >= 1:
                    ended = [k for k in range(rows) if last[k] >= self.stops[k]]
                    for k in ended:  # past the row's end: only EOT is left
                        logits[k, :] = -np.inf
                        logits[k, eot] = 0.0
                    if ended:
                        logprobs = None
                # GreedyDecoder.update
                if self.temperature == 0:
                    next_tokens = logits.argmax(dim=-1)
                else:
                    sampler = torch.distributions.Categorical(logits=logits / self.temperature)
                    next_tokens = sampler.sample()  # type: ignore[no-untyped-call]
                if logprobs is None:
                    logprobs = F.log_softmax(logits, dim=-1)
                current_logprobs = logprobs[arange, next_tokens]
                previous = self.tokens[:, self.length - 1]
                sum_logprobs += current_logprobs * (previous != eot)
                next_tokens[previous == eot] = eot
                self.tokens[:, self.length] = next_tokens
                self.length += 1
                values = next_tokens.tolist()
                for k, token in enumerate(values):
                    penultimate[k], last[k] = last[k], token
                    if token >= timestamp_begin:
                        last_timestamp[k] = token
                if all(token == eot for token in values) or self.length > self.n_ctx:
                    break
            return self.tokens[:, : self.length], sum_logprobs, no_speech_probs

        def _filters(self) -> tuple[Any, Any, int | None, bool]:
            """The logit filters as (every-step mask, first-step mask, max initial
            timestamp index, whether timestamp rules apply)."""
            n_vocab = self.w.embedding.shape[0]
            device = self.tokens.device
            always = torch.zeros(n_vocab, dtype=torch.bool, device=device)
            first = torch.zeros(n_vocab, dtype=torch.bool, device=device)
            max_initial: int | None = None
            timestamps = False
            for f in self.task.logit_filters:
                if isinstance(f, SuppressBlank):
                    first[[*self.tokenizer.encode(" "), self.eot]] = True
                elif isinstance(f, SuppressTokens):
                    always[list(f.suppress_tokens)] = True
                elif isinstance(f, ApplyTimestampRules):
                    timestamps = True
                    if self.tokenizer.no_timestamps is not None:
                        always[self.tokenizer.no_timestamps] = True
                    max_initial = f.max_initial_timestamp_index
            return always, first | always, max_initial, timestamps

    FastDecodingTask.loop_class = _Loop  # for benchmarks/profile_decode.py's timers
    return FastDecodingTask
