"""Contract: everything the SDK and the fake use exists on the installed ``modal`` package,
with the parameters we pass, and the fake's surface matches it."""

from __future__ import annotations

import inspect

import modal
import modal.exception as me

from tests.fakes.modal_fake import FakeCls, FakeFunctionCall, FakeMethod, FakeModal


def params(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_lookup_seam_signatures() -> None:
    assert {"app_name", "name", "environment_name"} <= params(modal.Cls.from_name)
    assert {"function_call_id"} <= params(modal.FunctionCall.from_id)
    fake = FakeModal()
    try:
        assert {"app_name", "name", "environment_name"} <= params(fake.cls_lookup)
        assert {"function_call_id"} <= params(fake.call_lookup)
    finally:
        fake.close()


def test_function_call_surface() -> None:
    import concurrent.futures as cf

    assert {"timeout", "index"} <= params(modal.FunctionCall.get)
    assert {"terminate_containers"} <= params(modal.FunctionCall.cancel)
    future: cf.Future[dict[str, object]] = cf.Future()
    fake_call = FakeFunctionCall(FakeModal(), "fc-1", future)
    for name in ("get", "cancel", "get_call_graph", "object_id"):
        assert hasattr(modal.FunctionCall, name), name
        assert hasattr(fake_call, name), name
    for name in ("get", "cancel", "get_call_graph"):
        assert hasattr(getattr(fake_call, name), "aio"), name  # the backend only uses .aio
    assert {"timeout", "index"} <= params(fake_call._get)
    assert {"terminate_containers"} <= params(fake_call._cancel)


def test_cls_and_method_surface() -> None:
    fake_cls = FakeCls(FakeModal())
    for name in ("hydrate", "with_options"):
        assert hasattr(modal.Cls, name) and hasattr(fake_cls, name), name
    assert hasattr(fake_cls.hydrate, "aio")
    assert {"gpu", "timeout", "max_containers", "scaledown_window"} <= params(
        modal.Cls.with_options
    )
    for name in ("remote", "spawn", "local"):
        assert hasattr(modal.Function, name), name
    assert {"remote", "spawn"} <= set(vars(FakeMethod(FakeModal(), "tiny.en", "transcribe")))


def test_app_building_blocks() -> None:
    assert {"default"} <= params(modal.parameter)
    assert {"create_if_missing", "name"} <= params(modal.Volume.from_name)
    assert {"name"} <= params(modal.Secret.from_name)
    assert {"python_version"} <= params(modal.Image.debian_slim)
    assert hasattr(modal.Image, "uv_pip_install") and hasattr(
        modal.Image, "add_local_python_source"
    )
    assert {"gpu", "timeout", "max_containers", "scaledown_window", "volumes", "secrets",
            "enable_memory_snapshot"} <= params(modal.App.cls)  # fmt: skip
    assert callable(modal.current_function_call_id) and callable(modal.is_local)
    assert callable(modal.enter) and callable(modal.method)
    assert {"max_batch_size", "wait_ms"} <= params(modal.batched)


def test_exceptions_the_mapper_knows_exist() -> None:
    for name in (
        "AuthError", "NotFoundError", "OutputExpiredError", "FunctionTimeoutError",
        "InputCancellation", "ResourceExhaustedError", "InternalFailure", "ConnectionError",
        "RemoteError", "ExecutionError", "InvalidError",
    ):  # fmt: skip
        assert isinstance(getattr(me, name), type), name
