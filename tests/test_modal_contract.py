"""Contract: everything the SDK and the app use exists on the installed ``modal`` package,
with the parameters we pass. (What those calls do is tested at the wire, through the
emulator: ``tests/emulator``.)"""

from __future__ import annotations

import inspect

import modal
import modal.exception as me


def params(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_lookup_signatures() -> None:
    assert {"app_name", "name", "environment_name"} <= params(modal.Cls.from_name)
    assert {"app_name", "name", "environment_name"} <= params(modal.Function.from_name)
    assert {"function_call_id"} <= params(modal.FunctionCall.from_id)
    assert {"name", "environment_name", "create_if_missing"} <= params(modal.Dict.from_name)


def test_function_call_surface() -> None:
    assert {"timeout", "index"} <= params(modal.FunctionCall.get)
    assert {"terminate_containers"} <= params(modal.FunctionCall.cancel)
    for name in ("get", "cancel", "get_call_graph", "object_id"):
        assert hasattr(modal.FunctionCall, name), name


def test_cls_and_method_surface() -> None:
    for name in ("hydrate", "with_options"):
        assert hasattr(modal.Cls, name), name
    assert {"gpu", "timeout", "max_containers", "scaledown_window"} <= params(
        modal.Cls.with_options
    )
    for name in ("remote", "spawn", "local"):
        assert hasattr(modal.Function, name), name


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


def test_every_call_the_backend_makes_has_an_aio_twin() -> None:
    # the backend only awaits ``.aio`` forms (its deadlines need coroutines)
    for owner, name in [
        (modal.Cls, "hydrate"),
        (modal.Function, "remote"),
        (modal.Function, "spawn"),
        (modal.Function, "map"),
        (modal.FunctionCall, "get"),
        (modal.FunctionCall, "cancel"),
        (modal.FunctionCall, "get_call_graph"),
    ]:
        assert hasattr(getattr(owner, name), "aio"), f"{owner.__name__}.{name}.aio"


def test_map_and_options_parameters_the_sdk_relies_on() -> None:
    assert {"order_outputs", "return_exceptions"} <= params(modal.Function.map)
    # ModalBackend(gpu=..., remote_timeout=...) -> Cls.with_options(gpu=..., timeout=...)
    assert {"gpu", "timeout"} <= params(modal.Cls.with_options)
    assert {"max_inputs"} <= params(modal.concurrent)
    assert {"snap"} <= params(modal.enter)
    assert {"default"} <= params(modal.parameter)


def test_old_modal_names_are_gone() -> None:
    # DESIGN: these raise in 1.6; the app must not use them (checked against its source)
    from pathlib import Path

    source = (Path(__file__).parents[1] / "whisper_modal" / "app.py").read_text()
    for old in ("keep_warm", "concurrency_limit", "container_idle_timeout",
                "allow_concurrent_inputs", "modal.Stub"):  # fmt: skip
        assert old not in source, old
    assert "keep_warm" not in params(modal.App.cls)
    assert not hasattr(modal, "Stub")


# --------------------------------------------------------------- deploy-ready (issue 10)


def _pinned_modal_range() -> tuple[str, str]:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    found = re.search(r'"modal>=([0-9.]+),<([0-9.]+)"', text)
    assert found, "pyproject.toml must pin modal as >=X,<Y"
    return found.group(1), found.group(2)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def test_installed_modal_is_inside_the_pinned_range() -> None:
    low, high = _pinned_modal_range()
    assert _version(low) <= _version(modal.__version__) < _version(high), modal.__version__


def test_no_test_or_source_uses_apis_the_pinned_range_removes() -> None:
    # modal marks these "will be removed in modal version 1.7.0"; our pin allows no 1.7
    # today, and nothing may depend on them when the pin moves.
    from pathlib import Path

    root = Path(__file__).parents[1]
    removed = ("registered_functions", "registered_classes", "registered_entrypoints",
               "registered_web_endpoints")  # fmt: skip
    files = [*root.glob("whisper_modal/**/*.py"), *root.glob("tests/**/*.py")]
    me_path = Path(__file__).resolve()
    for path in files:
        if path.resolve() == me_path:
            continue
        text = path.read_text()
        for name in removed:
            assert name not in text, f"{path.relative_to(root)} uses App.{name}"


def test_private_modal_apis_the_tests_read_still_exist() -> None:
    # test_modal_app compares what the container entrypoint compares; if these move,
    # that test must move with them (see modal/_runtime/user_code_imports.py)
    from modal._partial_function import _find_partial_methods_for_user_cls, _PartialFunctionFlags
    from modal._serialization import deserialize, serialize

    import whisper_modal.app as app_module

    fn = app_module.Transcriber._get_class_service_function()  # type: ignore[attr-defined]
    assert callable(fn._deps_) and callable(fn.info)
    assert callable(_find_partial_methods_for_user_cls)
    assert _PartialFunctionFlags.ENTER_PRE_SNAPSHOT and callable(serialize)
    assert {"client"} <= params(deserialize)


def test_gpu_names_cover_modals_own_enum() -> None:
    from modal_proto import api_pb2

    from whisper_modal.config import MODAL_GPU_TYPES

    names = {
        n.removeprefix("GPU_TYPE_").replace("_", "-")
        for n in api_pb2.GPUType.DESCRIPTOR.values_by_name
        if n != "GPU_TYPE_UNSPECIFIED"
    }
    assert names <= MODAL_GPU_TYPES, names - MODAL_GPU_TYPES


def test_deploy_building_blocks_exist() -> None:
    assert {"min_containers", "buffer_containers", "region", "experimental_options",
            "enable_memory_snapshot", "scaledown_window", "max_containers"} <= params(
        modal.App.cls
    )  # fmt: skip
    assert {"schedule", "volumes", "secrets", "timeout"} <= params(modal.App.function)
    assert {"min_containers"} <= params(modal.cls.Obj.update_autoscaler)
    assert callable(modal.Cron) and callable(modal.App.local_entrypoint)
    assert hasattr(modal.Volume, "commit") and hasattr(modal.Image, "env")
    assert {"gpu"} <= params(modal.App.cls)  # a list of types is Modal's fallback order
