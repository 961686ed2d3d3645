"""A GPU container's health report: named checks, versions, device and cold-start data."""

from __future__ import annotations

import shutil
from typing import Any

import modal

from whisper_modal.config import Settings
from whisper_modal.remote.runtime import Loaded, cold_starts

__all__ = ["health"]


def health(self: Loaded) -> dict[str, Any]:
    """Named checks (cuda, model_loaded, weights_volume, s3); a failing one says why.

    Nothing here raises: a broken install is a failing check, not a traceback.
    """
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: Any) -> None:
        checks[name] = {"ok": ok, "detail": detail}

    report: dict[str, Any] = {}
    try:
        report.update(self.engine.health())  # versions, cuda, gpu name: no model load
    except Exception as exc:  # a broken torch install is a failing check, not a traceback
        check("versions", False, f"{type(exc).__name__}: {exc}")
    if self.runtime.device == "cpu":  # run on CPU on purpose (a secret said so): no GPU due
        check("cuda", True, report.get("gpu") or "not required: WHISPER_MODAL_DEVICE=cpu")
    else:
        check(
            "cuda",
            bool(report.get("cuda")),
            report.get("gpu") or "torch sees no CUDA device (GPU not attached or driver broken)",
        )
    check(
        "model_loaded",
        self.load_error is None,
        f"{self.model} on {self.engine.device}"
        if self.load_error is None
        else f"{type(self.load_error).__name__}: {self.load_error}",
    )
    try:
        free = shutil.disk_usage(self.engine.store.cache_dir).free
        check(
            "weights_volume",
            free > 0,
            {"free_bytes": free, "path": str(self.engine.store.cache_dir)},
        )
    except OSError as exc:
        check("weights_volume", False, f"{type(exc).__name__}: {exc}")
    runtime = self.runtime
    if runtime.s3_staging_prefix or runtime.s3_endpoint_url:
        ok, detail = _s3_check(runtime)
        check("s3", ok, detail)
    from whisper_modal import __version__

    report.update(
        whisper_modal=__version__,
        modal=modal.__version__,
        model=self.model,
        model_loaded=self.load_error is None,
        device=self.engine.device if self.load_error is None else None,
        load_seconds=self.load_seconds,
        cold_starts=cold_starts(),
        memory_snapshot=self.deployed.enable_memory_snapshot,
        gpu_snapshot=self.deployed.enable_gpu_snapshot,
        checks=checks,
        failing=sorted(name for name, c in checks.items() if not c["ok"]),
    )
    return report


def _s3_check(runtime: Settings) -> tuple[bool, str]:
    """Can this container reach the object store it is configured for?"""
    import asyncio

    from whisper_modal.backends.modal_transport import unreachable_reason

    try:
        if runtime.s3_staging_prefix:  # a bucket we must read: ask S3 about it
            from whisper_modal.errors import map_boto_error
            from whisper_modal.storage import S3Store, parse_s3_prefix

            bucket, _ = parse_s3_prefix(runtime.s3_staging_prefix)
            store = S3Store(runtime.s3_endpoint_url, runtime.s3_region)
            try:
                store.client.head_bucket(Bucket=bucket)
            except Exception as exc:
                raise map_boto_error(exc, uri=f"s3://{bucket}") from exc
            return True, f"bucket {bucket} readable"
        endpoint = str(runtime.s3_endpoint_url)
        reason = asyncio.run(unreachable_reason([endpoint], 5.0))
        return reason is None, reason or f"{endpoint} accepts connections"
    except Exception as exc:  # a named failing check, never a traceback
        return False, f"{type(exc).__name__}: {exc}"
