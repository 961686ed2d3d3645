# ruff: noqa: N802  (the RPC names are Modal's)
"""The subset of Modal's control-plane API (``modal_proto.api_grpc.ModalClientBase``) our app uses.

Unmodified ``modal`` (the CLI, the client library and ``modal._container_entrypoint``)
talks to this servicer over gRPC on loopback. Every RPC this class does not define answers
``UNIMPLEMENTED`` with its name and is recorded in ``unimplemented``, so a new code path
that needs another RPC fails loudly instead of being faked silently.

What it keeps: apps and their published objects, images (their Dockerfile commands give a
container its environment and its packages), functions and classes as ``modal deploy``
created them, parameter-bound variants, secrets, volumes, Dicts, function calls with their
inputs and outputs, the call graph, and the containers that run the inputs
(``containers.ContainerPool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpclib
from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from tests.emulator.blobs import BlobStore
from tests.emulator.faults import WireFaults

#: Modal's inline payload limit (bigger arguments and results go through blob storage)
MAX_OBJECT_SIZE_BYTES = 2 * 1024 * 1024
#: ... and for ``.spawn`` (async invocations)
MAX_ASYNC_OBJECT_SIZE_BYTES = 8 * 1024
#: Dict limits that matter to us: a key and a value are each at most this big
MAX_DICT_VALUE_BYTES = 100 * 1024 * 1024
#: how long a data stream (``FunctionCallGetDataIn``/``Out``) stays open with nothing new;
#: Modal's client opens it again from its ``last_index``
DATA_STREAM_SECONDS = 30.0


class Signal:
    """A change notice many readers wait on: take ``current()`` before reading the state,
    then wait on it; ``notify()`` wakes every reader that took it (no wake-up is lost)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


@dataclass
class InputState:
    """One input of a function call, as the server tracks it."""

    input_id: str
    idx: int
    item: api_pb2.FunctionInput
    function_call_id: str
    invocation_type: int
    retry_count: int = 0
    status: str = "pending"  # pending | running | retrying | done
    task_id: str = ""
    output: api_pb2.FunctionGetOutputsItem | None = None
    leased_at: float = 0.0
    tasks: list[str] = field(default_factory=list)  # every container that took it, in order
    queued_at: float = field(default_factory=time.monotonic)  # when it was put in
    finished_at: float = 0.0  # time.monotonic() when its output came
    held_from: float = 0.0  # a hold (``WireFaults.hold_inputs``) placed then...
    held_until: float = 0.0  # ... keeps containers from taking it before this


@dataclass
class CallState:
    """A FunctionCall: its function, the input it came from and its inputs."""

    function_call_id: str
    function_id: str
    parent_input_id: str
    inputs: list[InputState] = field(default_factory=list)
    cancelled: bool = False
    cancelled_at: float = 0.0  # time.monotonic() of the first FunctionCallCancel
    expired: bool = False  # its outputs are past Modal's retention (``Servicer.expire``)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: a generator's (or a web input's) data streams, chunks by ``index`` from 1
    data_in: list[api_pb2.DataChunk] = field(default_factory=list)
    data_out: list[api_pb2.DataChunk] = field(default_factory=list)
    data_changed: Signal = field(default_factory=Signal)  # a chunk came, or an output

    @property
    def finished(self) -> bool:
        return bool(self.inputs) and all(i.output is not None for i in self.inputs)


@dataclass
class FunctionState:
    """A function as deployed (or a parameter-bound variant of a class's service function)."""

    function_id: str
    app_id: str
    definition: api_pb2.Function
    metadata: api_pb2.FunctionHandleMetadata
    data: api_pb2.FunctionData = field(default_factory=api_pb2.FunctionData)
    serialized_params: bytes = b""
    options: api_pb2.FunctionOptions | None = None
    base_function_id: str = ""
    queue: list[InputState] = field(default_factory=list)
    queued: asyncio.Condition = field(default_factory=asyncio.Condition)


def _reader(method: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """A unary handler: receive the request, answer what ``method`` returns."""

    async def handler(self: Any, stream: Any) -> None:
        request = await stream.recv_message()
        self.record(method.__name__)
        fault = self.faults.rpc_error(method.__name__)
        if fault is not None:
            raise fault
        response = await method(self, request)
        await self.hold_answer(method.__name__)
        await stream.send_message(response)

    handler.__name__ = method.__name__
    return handler


class Servicer(ModalClientBase):
    """Modal's API as far as this project needs it, with its state in memory."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.calls: list[str] = []
        self.client_calls: list[str] = []  # the RPCs that came from clients (not containers)
        self.unimplemented: list[str] = []
        self.ids = itertools.count(1)  # shared with every task's view (see ``for_task``)
        self.task_id = ""  # "" on the client socket; a task's own socket serves a view
        self.apps: dict[str, str] = {}  # name -> app id (deployed)
        self.app_names: dict[str, str] = {}  # app id -> name
        self.app_objects: dict[str, dict[str, str]] = {}  # app id -> tag -> object id
        self.images: dict[str, api_pb2.Image] = {}
        self.functions: dict[str, FunctionState] = {}
        self.classes: dict[str, str] = {}  # class id -> app id
        self.secrets: dict[str, str] = {}  # name -> secret id
        self.secret_env: dict[str, dict[str, str]] = {}  # secret id -> env
        self.volumes: dict[str, str] = {}
        self.map_answers: dict[str, api_pb2.FunctionMapResponse] = {}  # idempotency key ->
        self.acks_to_drop: dict[str, int] = {}  # function name -> FunctionMap answers to lose
        self.dropped_acks: list[str] = []  # the calls whose answer was lost
        self.dict_names: dict[str, str] = {}
        self.dicts: dict[str, dict[bytes, bytes]] = {}
        self.mounts: dict[str, api_pb2.MountGetOrCreateRequest] = {}
        self.mount_files: dict[str, bytes] = {}  # sha256 hex -> content
        self.function_calls: dict[str, CallState] = {}
        self.inputs: dict[str, InputState] = {}
        self.pool: Any = None  # containers.ContainerPool, set by the emulator
        self.heartbeat_wakeup: dict[str, asyncio.Event] = {}
        self.cancelled_for_task: dict[str, list[str]] = {}
        self.task_results: dict[str, api_pb2.TaskResultRequest] = {}
        self.server_retries: list[str] = []  # input ids Modal ran again (``_retry_on_server``)
        self.deliveries: list[tuple[str, list[str]]] = []  # (function id, input ids) per take
        self._background: set[asyncio.Task[None]] = set()
        self.disconnected: dict[str, asyncio.Event] = {}  # app id -> its client went away
        self.web: Any = None  # proxy.WebProxy, set by the emulator: it serves the web_urls
        #: function names whose queued inputs no container takes (see ``pause``)
        self.paused: set[str] = set()
        #: faults a test injects at the wire (``faults.WireFaults``)
        self.faults = WireFaults()
        self.lookups: list[tuple[str, str]] = []  # (app name, object tag) per ClassGet/FunctionGet

    def record(self, rpc: str) -> None:
        """Count one RPC: in ``calls`` (every caller) and ``client_calls`` (not a container's)."""
        self.calls.append(rpc)
        if not self.task_id:
            self.client_calls.append(rpc)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids)}"

    def for_task(self, task_id: str) -> Servicer:
        """The servicer as one container sees it: Modal knows a task by its connection, so
        each container gets a socket of its own served by a view that shares all state."""
        view = copy.copy(self)
        view.task_id = task_id
        return view

    # grpclib builds its routing table from ``__mapping__``; RPCs we do not serve answer
    # UNIMPLEMENTED instead of being abstract (ModalClientBase declares ~285 of them)
    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = super().__mapping__()
        for path, handler in list(mapping.items()):
            name = path.rsplit("/", 1)[1]
            if getattr(type(self), name, None) is getattr(ModalClientBase, name, None):
                mapping[path] = grpclib.const.Handler(
                    self._unimplemented(name),
                    handler.cardinality,
                    handler.request_type,
                    handler.reply_type,
                )
        return mapping

    def _unimplemented(self, name: str) -> Callable[[Any], Any]:
        async def refuse(stream: Any) -> None:
            self.unimplemented.append(name)
            raise GRPCError(Status.UNIMPLEMENTED, f"emulator: {name} is not implemented")

        return refuse

    # -- client, environment
    @_reader
    async def ClientHello(self, request: Empty) -> api_pb2.ClientHelloResponse:
        return api_pb2.ClientHelloResponse()

    @_reader
    async def EnvironmentGetOrCreate(
        self, request: api_pb2.EnvironmentGetOrCreateRequest
    ) -> api_pb2.EnvironmentGetOrCreateResponse:
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-1",
            metadata=api_pb2.EnvironmentMetadata(
                name=request.deployment_name or "main",
                settings=api_pb2.EnvironmentSettings(
                    image_builder_version="2025.06", webhook_suffix="emulator.modal.run"
                ),
            ),
        )

    # -- apps
    @_reader
    async def AppGetByDeploymentName(
        self, request: api_pb2.AppGetByDeploymentNameRequest
    ) -> api_pb2.AppGetByDeploymentNameResponse:
        return api_pb2.AppGetByDeploymentNameResponse(app_id=self.apps.get(request.name, ""))

    @_reader
    async def AppCreate(self, request: api_pb2.AppCreateRequest) -> api_pb2.AppCreateResponse:
        app_id = self.new_id("ap")
        self.app_names[app_id] = request.description
        self.app_objects[app_id] = {}
        return api_pb2.AppCreateResponse(
            app_id=app_id, app_page_url=f"http://emulator/apps/{app_id}"
        )

    @_reader
    async def AppGetLayout(
        self, request: api_pb2.AppGetLayoutRequest
    ) -> api_pb2.AppGetLayoutResponse:
        return api_pb2.AppGetLayoutResponse(app_layout=self.layout(request.app_id))

    @_reader
    async def AppPublish(self, request: api_pb2.AppPublishRequest) -> api_pb2.AppPublishResponse:
        objects = {**request.function_ids, **request.class_ids}
        for object_id in objects.values():
            if object_id not in self.functions and object_id not in self.classes:
                raise GRPCError(Status.INVALID_ARGUMENT, f"unknown object {object_id}")
        self.app_objects[request.app_id] = objects
        if request.app_state == api_pb2.APP_STATE_DEPLOYED:
            self.apps[request.name] = request.app_id
            self.app_names[request.app_id] = request.name
        return api_pb2.AppPublishResponse(
            url=f"http://emulator/apps/{request.name}", deployed_at=time.time()
        )

    @_reader
    async def AppClientDisconnect(self, request: api_pb2.AppClientDisconnectRequest) -> Empty:
        self.disconnected.setdefault(request.app_id, asyncio.Event()).set()
        return Empty()

    async def AppGetLogs(self, stream: Any) -> None:
        """``modal run`` follows the app's logs until it is done. Containers' output stays
        in their log files (``ContainerPool.logs``), so the stream carries no entries: it
        says ``app_done`` once the client disconnected, else ends at the request's timeout."""
        request: api_pb2.AppGetLogsRequest = await stream.recv_message()
        self.record("AppGetLogs")
        done = self.disconnected.setdefault(request.app_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), min(request.timeout or 5.0, 5.0))
        if done.is_set():
            await stream.send_message(api_pb2.TaskLogsBatch(app_done=True))

    @_reader
    async def AppHeartbeat(self, request: api_pb2.AppHeartbeatRequest) -> Empty:
        return Empty()

    def layout(self, app_id: str) -> api_pb2.AppLayout:
        """What a container of ``app_id`` hydrates its objects from."""
        objects = self.app_objects.get(app_id, {})
        ids = set(objects.values())
        for object_id in list(ids):
            if object_id in self.functions:
                ids |= {
                    d.object_id for d in self.functions[object_id].definition.object_dependencies
                }
        return api_pb2.AppLayout(
            objects=[self.object_metadata(i) for i in sorted(ids)],
            function_ids={t: i for t, i in objects.items() if i.startswith("fu-")},
            class_ids={t: i for t, i in objects.items() if i.startswith("cs-")},
        )

    def object_metadata(self, object_id: str) -> api_pb2.Object:
        if object_id in self.functions:
            return api_pb2.Object(
                object_id=object_id, function_handle_metadata=self.functions[object_id].metadata
            )
        if object_id.startswith("cs-"):
            return api_pb2.Object(
                object_id=object_id, class_handle_metadata=api_pb2.ClassHandleMetadata()
            )
        if object_id.startswith("mo-"):
            return api_pb2.Object(
                object_id=object_id,
                mount_handle_metadata=api_pb2.MountHandleMetadata(
                    content_checksum_sha256_hex="0" * 64
                ),
            )
        if object_id.startswith("vo-"):
            return api_pb2.Object(
                object_id=object_id, volume_metadata=api_pb2.VolumeMetadata(version=2)
            )
        return api_pb2.Object(object_id=object_id)

    # -- images and mounts
    @_reader
    async def ImageGetOrCreate(
        self, request: api_pb2.ImageGetOrCreateRequest
    ) -> api_pb2.ImageGetOrCreateResponse:
        image_id = self.new_id("im")
        self.images[image_id] = request.image
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=api_pb2.ImageMetadata(python_version_info="3.12"),
        )

    async def ImageJoinStreaming(self, stream: Any) -> None:
        await stream.recv_message()
        self.record("ImageJoinStreaming")
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
                eof=True,
            )
        )

    @_reader
    async def MountGetOrCreate(
        self, request: api_pb2.MountGetOrCreateRequest
    ) -> api_pb2.MountGetOrCreateResponse:
        mount_id = self.new_id("mo")
        self.mounts[mount_id] = request
        return api_pb2.MountGetOrCreateResponse(
            mount_id=mount_id,
            handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex="0" * 64),
        )

    @_reader
    async def MountBatchedCheckExistence(
        self, request: api_pb2.MountBatchedCheckExistenceRequest
    ) -> api_pb2.MountBatchedCheckExistenceResponse:
        missing = [h for h in request.sha256_hex_hashes if h not in self.mount_files]
        return api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)

    @_reader
    async def MountPutFile(
        self, request: api_pb2.MountPutFileRequest
    ) -> api_pb2.MountPutFileResponse:
        if request.WhichOneof("data_oneof") == "data_blob_id":
            data = self.blobs.blobs[request.data_blob_id]
        else:
            data = request.data
        self.mount_files[request.sha256_hex] = data  # an empty file is data=b""
        return api_pb2.MountPutFileResponse(exists=request.sha256_hex in self.mount_files)

    # -- secrets, volumes
    @_reader
    async def SecretGetOrCreate(
        self, request: api_pb2.SecretGetOrCreateRequest
    ) -> api_pb2.SecretGetOrCreateResponse:
        name = request.deployment_name
        creating = request.object_creation_type in (
            api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
            api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
            api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS,
            api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP,
        )
        secret_id = self.secrets.get(name) if name else None
        if secret_id is None:
            if not creating:
                raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found")
            secret_id = self.new_id("st")
            if name:
                self.secrets[name] = secret_id
            self.secret_env[secret_id] = dict(request.env_dict)
        elif (
            request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS
        ):
            self.secret_env[secret_id] = dict(request.env_dict)
        missing = [k for k in request.required_keys if k not in self.secret_env[secret_id]]
        if missing:
            raise GRPCError(Status.NOT_FOUND, f"Secret is missing key(s): {', '.join(missing)}")
        return api_pb2.SecretGetOrCreateResponse(secret_id=secret_id)

    @_reader
    async def VolumeGetOrCreate(
        self, request: api_pb2.VolumeGetOrCreateRequest
    ) -> api_pb2.VolumeGetOrCreateResponse:
        name = request.deployment_name
        if name not in self.volumes:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Volume '{name}' not found")
            self.volumes[name] = self.new_id("vo")
        return api_pb2.VolumeGetOrCreateResponse(
            volume_id=self.volumes[name], metadata=api_pb2.VolumeMetadata(version=2)
        )

    @_reader
    async def VolumeCommit(
        self, request: api_pb2.VolumeCommitRequest
    ) -> api_pb2.VolumeCommitResponse:
        return api_pb2.VolumeCommitResponse(skip_reload=True)

    @_reader
    async def VolumeReload(self, request: api_pb2.VolumeReloadRequest) -> Empty:
        return Empty()

    # -- functions and classes
    @_reader
    async def FunctionPrecreate(
        self, request: api_pb2.FunctionPrecreateRequest
    ) -> api_pb2.FunctionPrecreateResponse:
        function_id = request.existing_function_id or self.new_id("fu")
        methods = {
            name: api_pb2.FunctionHandleMetadata(
                function_name=d.function_name,
                function_type=d.function_type,
                is_method=True,
                use_method_name=name,
                function_schema=d.function_schema,
                app_id=request.app_id,
            )
            for name, d in request.method_definitions.items()
        }
        return api_pb2.FunctionPrecreateResponse(
            function_id=function_id,
            handle_metadata=api_pb2.FunctionHandleMetadata(
                function_name=request.function_name,
                function_type=request.function_type,
                method_handle_metadata=methods,
                function_schema=request.function_schema,
                app_id=request.app_id,
            ),
        )

    @_reader
    async def FunctionCreate(
        self, request: api_pb2.FunctionCreateRequest
    ) -> api_pb2.FunctionCreateResponse:
        function_id = request.existing_function_id or self.new_id("fu")
        if request.function_data.ranked_functions:
            # a GPU fallback list: one definition per GPU type; a container gets the first
            data = api_pb2.FunctionData()
            data.CopyFrom(request.function_data)
            function = api_pb2.Function()
            function.CopyFrom(data.ranked_functions[0].function)
        else:
            function = api_pb2.Function()
            function.CopyFrom(request.function)
            data = api_pb2.FunctionData(
                ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=function)]
            )
        if function.webhook_config.type:
            # Modal's web URL for the function (its own host); the emulator's web proxy
            # serves it on a loopback port of its own
            function.web_url = (
                await self.web.serve(function_id)
                if self.web is not None
                else f"http://emulator/web/{function_id}"
            )
        metadata = self.handle_metadata(function, function_id, request.app_id)
        self.functions[function_id] = FunctionState(
            function_id, request.app_id, function, metadata, data=data
        )
        return api_pb2.FunctionCreateResponse(
            function_id=function_id, function=function, function_data=data, handle_metadata=metadata
        )

    def handle_metadata(
        self, function: api_pb2.Function, function_id: str, app_id: str
    ) -> api_pb2.FunctionHandleMetadata:
        return api_pb2.FunctionHandleMetadata(
            function_name=function.function_name,
            function_type=function.function_type,
            web_url=function.web_url,
            is_method=function.is_method,
            class_parameter_info=function.class_parameter_info,
            method_handle_metadata={
                name: api_pb2.FunctionHandleMetadata(
                    function_name=d.function_name,
                    function_type=d.function_type,
                    web_url=d.web_url,
                    is_method=True,
                    use_method_name=name,
                    function_schema=d.function_schema,
                    supported_input_formats=d.supported_input_formats,
                    supported_output_formats=d.supported_output_formats,
                    app_id=app_id,
                )
                for name, d in function.method_definitions.items()
            },
            function_schema=function.function_schema,
            max_object_size_bytes=MAX_OBJECT_SIZE_BYTES,
            max_async_object_size_bytes=MAX_ASYNC_OBJECT_SIZE_BYTES,
            definition_id=f"de-{function_id}",
            supported_input_formats=function.supported_input_formats,
            supported_output_formats=function.supported_output_formats,
            app_id=app_id,
        )

    @_reader
    async def ClassCreate(self, request: api_pb2.ClassCreateRequest) -> api_pb2.ClassCreateResponse:
        class_id = request.existing_class_id or self.new_id("cs")
        self.classes[class_id] = request.app_id
        return api_pb2.ClassCreateResponse(class_id=class_id)

    def lookup(self, app_name: str, tag: str, kind: str) -> str:
        self.lookups.append((app_name, tag))
        app_id = self.apps.get(app_name)
        if app_id is None:
            raise GRPCError(Status.NOT_FOUND, f"App '{app_name}' not found")
        object_id = self.app_objects[app_id].get(tag)
        if object_id is None:
            raise GRPCError(Status.NOT_FOUND, f"{kind} '{tag}' not found in app '{app_name}'")
        return object_id

    @_reader
    async def ClassGet(self, request: api_pb2.ClassGetRequest) -> api_pb2.ClassGetResponse:
        class_id = self.lookup(request.app_name, request.object_tag, "Class")
        return api_pb2.ClassGetResponse(class_id=class_id)

    @_reader
    async def FunctionGet(self, request: api_pb2.FunctionGetRequest) -> api_pb2.FunctionGetResponse:
        function_id = self.lookup(request.app_name, request.object_tag, "Function")
        state = self.functions[function_id]
        return api_pb2.FunctionGetResponse(
            function_id=function_id, handle_metadata=state.metadata, function=state.data
        )

    @_reader
    async def FunctionBindParams(
        self, request: api_pb2.FunctionBindParamsRequest
    ) -> api_pb2.FunctionBindParamsResponse:
        base = self.functions.get(request.function_id)
        if base is None:
            raise GRPCError(Status.NOT_FOUND, f"Function {request.function_id} not found")
        key = (
            request.function_id,
            request.serialized_params,
            request.function_options.SerializeToString(),
        )
        for state in self.functions.values():
            if (
                state.base_function_id,
                state.serialized_params,
                (state.options or api_pb2.FunctionOptions()).SerializeToString(),
            ) == key:
                return api_pb2.FunctionBindParamsResponse(
                    bound_function_id=state.function_id, handle_metadata=state.metadata
                )
        function_id = self.new_id("fu")
        definition = api_pb2.Function()
        definition.CopyFrom(base.definition)
        options = request.function_options if request.HasField("function_options") else None
        if options is not None:
            _apply_options(definition, options)
        metadata = api_pb2.FunctionHandleMetadata()
        metadata.CopyFrom(base.metadata)
        self.functions[function_id] = FunctionState(
            function_id,
            base.app_id,
            definition,
            metadata,
            serialized_params=request.serialized_params,
            options=options,
            base_function_id=request.function_id,
        )
        return api_pb2.FunctionBindParamsResponse(
            bound_function_id=function_id, handle_metadata=metadata
        )

    @_reader
    async def FunctionGetCurrentStats(
        self, request: api_pb2.FunctionGetCurrentStatsRequest
    ) -> api_pb2.FunctionStats:
        state = self.functions[request.function_id]
        return api_pb2.FunctionStats(
            backlog=sum(1 for i in state.queue if i.status == "pending"),
            num_total_tasks=self.pool.count(request.function_id) if self.pool else 0,
        )

    @_reader
    async def FunctionUpdateSchedulingParams(
        self, request: api_pb2.FunctionUpdateSchedulingParamsRequest
    ) -> api_pb2.FunctionUpdateSchedulingParamsResponse:
        return api_pb2.FunctionUpdateSchedulingParamsResponse()

    # -- calls
    def _new_input(
        self, call: CallState, item: api_pb2.FunctionPutInputsItem, invocation_type: int
    ) -> InputState:
        if (
            item.input.WhichOneof("args_oneof") == "args"
            and len(item.input.args) > MAX_OBJECT_SIZE_BYTES
        ):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"input of {len(item.input.args)} bytes is over the {MAX_OBJECT_SIZE_BYTES} inline limit",
            )
        if (
            item.input.WhichOneof("args_oneof") == "args_blob_id"
            and item.input.args_blob_id not in self.blobs.blobs
        ):
            raise GRPCError(Status.INVALID_ARGUMENT, f"unknown blob {item.input.args_blob_id}")
        state = InputState(
            input_id=self.new_id("in"),
            idx=item.idx,
            item=item.input,
            function_call_id=call.function_call_id,
            invocation_type=invocation_type,
        )
        call.inputs.append(state)
        self.inputs[state.input_id] = state
        return state

    async def _enqueue(self, function_id: str, inputs: list[InputState]) -> None:
        state = self.functions[function_id]
        inputs = [i for i in inputs if self._take_fault(state, i)]
        async with state.queued:
            state.queue.extend(inputs)
            state.queued.notify_all()
        if self.pool is not None:
            await self.pool.demand(function_id)

    def _take_fault(self, function: FunctionState, state: InputState) -> bool:
        """Apply the test's fault for this input (``WireFaults``); False: it failed already."""
        fault = self.faults.input_fault(function.definition.function_name)
        if fault is None:
            return True
        if fault.result is None:
            state.held_from = time.monotonic()
            state.held_until = state.held_from + fault.hold_seconds
            return True
        self.deliveries.append((function.function_id, [state.input_id]))
        self._fail(state, fault.result)
        return False

    def _held(self, state: InputState) -> bool:
        return state.held_until > time.monotonic() and state.held_from > self.faults.released_at

    async def FunctionMap(self, stream: Any) -> None:
        """Create a call and its pipelined inputs; a retried request is answered once.

        Modal's client sends every attempt of one RPC with the same ``x-idempotency-key``
        and Modal's server answers a repeated key with the first answer (no new call).
        ``drop_acks`` makes the server accept the inputs and lose the answer: UNAVAILABLE.
        """
        request: api_pb2.FunctionMapRequest = await stream.recv_message()
        self.record("FunctionMap")
        fault = self.faults.rpc_error("FunctionMap")
        if fault is not None:
            raise fault  # before anything was accepted
        key = dict(stream.metadata or {}).get("x-idempotency-key", "")
        response = self.map_answers.get(key) if key else None
        if response is None:
            response = await self._function_map(request)
            if key:
                self.map_answers[key] = response
        await self.hold_answer("FunctionMap")  # accepted: the answer may come late
        name = self.functions[request.function_id].definition.function_name
        if self.acks_to_drop.get(name, 0) > 0:
            self.acks_to_drop[name] -= 1
            self.dropped_acks.append(response.function_call_id)
            raise GRPCError(Status.UNAVAILABLE, "emulated: the acknowledgement was lost")
        await stream.send_message(response)

    async def drop_acks(self, function_name: str, count: int) -> None:
        """Lose the answer of the next ``count`` FunctionMap requests to ``function_name``
        (its inputs are queued all the same), as a connection reset after the server's
        commit would: a test's hook."""
        self.acks_to_drop[function_name] = count

    async def _function_map(
        self, request: api_pb2.FunctionMapRequest
    ) -> api_pb2.FunctionMapResponse:
        if request.function_id not in self.functions:
            raise GRPCError(Status.NOT_FOUND, f"Function {request.function_id} not found")
        call = CallState(self.new_id("fc"), request.function_id, request.parent_input_id)
        self.function_calls[call.function_call_id] = call
        inputs = [
            self._new_input(call, item, request.function_call_invocation_type)
            for item in request.pipelined_inputs
        ]
        await self._enqueue(request.function_id, inputs)
        definition = self.functions[request.function_id].definition
        return api_pb2.FunctionMapResponse(
            function_call_id=call.function_call_id,
            function_call_jwt=f"{request.function_id}:{call.function_call_id}",
            pipelined_inputs=[
                api_pb2.FunctionPutInputsResponseItem(
                    idx=i.idx, input_id=i.input_id, input_jwt=i.input_id
                )
                for i in inputs
            ],
            retry_policy=definition.retry_policy,
            sync_client_retries_enabled=True,
            max_inputs_outstanding=1000,
        )

    @_reader
    async def FunctionPutInputs(
        self, request: api_pb2.FunctionPutInputsRequest
    ) -> api_pb2.FunctionPutInputsResponse:
        call = self.function_calls[request.function_call_id]
        inputs = [
            self._new_input(call, item, api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC)
            for item in request.inputs
        ]
        await self._enqueue(call.function_id, inputs)
        return api_pb2.FunctionPutInputsResponse(
            inputs=[
                api_pb2.FunctionPutInputsResponseItem(
                    idx=i.idx, input_id=i.input_id, input_jwt=i.input_id
                )
                for i in inputs
            ]
        )

    @_reader
    async def FunctionRetryInputs(
        self, request: api_pb2.FunctionRetryInputsRequest
    ) -> api_pb2.FunctionRetryInputsResponse:
        retried = []
        for item in request.inputs:
            state = self.inputs[item.input_jwt]
            state.retry_count += 1
            state.status, state.output = "pending", None
            retried.append(state)
            await self._enqueue(self.function_calls[state.function_call_id].function_id, [state])
        return api_pb2.FunctionRetryInputsResponse(input_jwts=[s.input_id for s in retried])

    @_reader
    async def FunctionCallFromId(
        self, request: api_pb2.FunctionCallFromIdRequest
    ) -> api_pb2.FunctionCallFromIdResponse:
        call = self.function_calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"FunctionCall {request.function_call_id} not found")
        return api_pb2.FunctionCallFromIdResponse(
            function_call_id=call.function_call_id,
            num_inputs=len(call.inputs),
            metadata=api_pb2.FunctionCallHandleMetadata(
                function_id=call.function_id, app_id=self.functions[call.function_id].app_id
            ),
        )

    @_reader
    async def FunctionGetOutputs(
        self, request: api_pb2.FunctionGetOutputsRequest
    ) -> api_pb2.FunctionGetOutputsResponse:
        call = self.function_calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"FunctionCall {request.function_call_id} not found")
        deadline = time.monotonic() + max(0.0, request.timeout)
        if call.expired:  # nothing left to give and nothing unfinished: Modal's expired call
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0)
        while True:
            wanted = [
                i
                for i in call.inputs
                if (
                    not request.HasField("start_idx")
                    or request.start_idx <= i.idx <= request.end_idx
                )
            ]
            done = [i for i in wanted if i.output is not None]
            if request.input_jwts:
                done = [i for i in done if i.input_id in request.input_jwts]
            if done:
                return api_pb2.FunctionGetOutputsResponse(
                    outputs=[i.output for i in done if i.output is not None],
                    num_unfinished_inputs=sum(1 for i in call.inputs if i.output is None),
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return api_pb2.FunctionGetOutputsResponse(
                    num_unfinished_inputs=sum(1 for i in call.inputs if i.output is None)
                )
            call.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.changed.wait(), min(left, 1.0))

    @_reader
    async def FunctionCallCancel(self, request: api_pb2.FunctionCallCancelRequest) -> Empty:
        call = self.function_calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"FunctionCall {request.function_call_id} not found")
        if not call.cancelled:
            call.cancelled, call.cancelled_at = True, time.monotonic()
        for state in call.inputs:
            if state.status == "pending":
                self._finish(state, _terminated("cancelled before it started"))
            elif state.status == "running" and state.task_id:
                if request.terminate_containers and self.pool is not None:
                    await self.pool.kill(state.task_id)
                else:
                    self.cancelled_for_task.setdefault(state.task_id, []).append(state.input_id)
                    self.heartbeat_wakeup.setdefault(state.task_id, asyncio.Event()).set()
        return Empty()

    @_reader
    async def FunctionGetCallGraph(
        self, request: api_pb2.FunctionGetCallGraphRequest
    ) -> api_pb2.FunctionGetCallGraphResponse:
        root = self.function_calls.get(request.function_call_id)
        if root is None:
            raise GRPCError(Status.NOT_FOUND, f"FunctionCall {request.function_call_id} not found")
        calls, frontier = [root], [root]
        while frontier:
            input_ids = {i.input_id for c in frontier for i in c.inputs}
            frontier = [c for c in self.function_calls.values() if c.parent_input_id in input_ids]
            calls += frontier
        return api_pb2.FunctionGetCallGraphResponse(
            function_calls=[
                api_pb2.FunctionCallCallGraphInfo(
                    function_call_id=c.function_call_id,
                    parent_input_id=c.parent_input_id,
                    function_name=self.functions[c.function_id].definition.function_name,
                    module_name=self.functions[c.function_id].definition.module_name,
                )
                for c in calls
            ],
            inputs=[
                api_pb2.InputCallGraphInfo(
                    input_id=i.input_id,
                    status=_graph_status(i),
                    function_call_id=c.function_call_id,
                    task_id=i.task_id,
                )
                for c in calls
                for i in c.inputs
            ],
        )

    def _finish(self, state: InputState, output: api_pb2.FunctionGetOutputsItem) -> None:
        state.status, state.output, state.finished_at = "done", output, time.monotonic()
        call = self.function_calls[state.function_call_id]
        call.changed.set()
        call.data_changed.notify()

    # -- the container side
    @_reader
    async def ContainerHello(self, request: Empty) -> Empty:
        return Empty()

    async def ContainerHeartbeat(self, stream: Any) -> None:
        await stream.recv_message()
        task_id = self.task_id
        wakeup = self.heartbeat_wakeup.setdefault(task_id, asyncio.Event())
        if not self.cancelled_for_task.get(task_id):
            with contextlib.suppress(
                TimeoutError
            ):  # hold the heartbeat a little, so a cancellation reaches the task at once
                await asyncio.wait_for(wakeup.wait(), 2.0)
        wakeup.clear()
        cancelled = self.cancelled_for_task.pop(task_id, [])
        if cancelled:
            await stream.send_message(
                api_pb2.ContainerHeartbeatResponse(
                    cancel_input_event=api_pb2.CancelInputEvent(input_ids=cancelled)
                )
            )
        else:
            await stream.send_message(api_pb2.ContainerHeartbeatResponse())

    async def FunctionGetInputs(self, stream: Any) -> None:
        request: api_pb2.FunctionGetInputsRequest = await stream.recv_message()
        self.record("FunctionGetInputs")
        task_id = self.task_id
        state = self.functions[request.function_id]
        batch = max(1, request.batch_max_size)
        deadline = time.monotonic() + 5.0
        taken: list[InputState] = []
        async with state.queued:
            while True:
                if self.pool is not None and self.pool.retiring(task_id):
                    await stream.send_message(
                        api_pb2.FunctionGetInputsResponse(
                            inputs=[api_pb2.FunctionGetInputsItem(kill_switch=True)]
                        )
                    )
                    return
                pending = [
                    i
                    for i in state.queue
                    if i.status == "pending"
                    and not self.is_paused(request.function_id)
                    and not self._held(i)
                ]
                holding = any(self._held(i) for i in state.queue)
                if pending:
                    taken = pending[:batch]
                    if len(taken) < batch and request.batch_linger_ms and not taken[0].leased_at:
                        taken[0].leased_at = time.monotonic()
                    linger_left = (
                        (taken[0].leased_at + request.batch_linger_ms / 1000) - time.monotonic()
                        if taken[0].leased_at
                        else 0
                    )
                    if len(taken) >= batch or linger_left <= 0:
                        break
                    wait = linger_left
                else:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        break
                    if holding:
                        wait = min(wait, 0.05)  # a hold ends by time or by release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.queued.wait(), wait)
            for i in taken:
                state.queue.remove(i)
                i.status, i.task_id = "running", task_id
                i.tasks.append(task_id)
        if taken:
            self.deliveries.append((request.function_id, [i.input_id for i in taken]))
        if self.pool is not None and taken:
            self.pool.started(task_id, [i.input_id for i in taken])
        await stream.send_message(
            api_pb2.FunctionGetInputsResponse(
                inputs=[
                    api_pb2.FunctionGetInputsItem(
                        input_id=i.input_id,
                        input=i.item,
                        function_call_id=i.function_call_id,
                        function_call_invocation_type=i.invocation_type,
                        retry_count=i.retry_count,
                    )
                    for i in taken
                ]
            )
        )

    @_reader
    async def FunctionPutOutputs(self, request: api_pb2.FunctionPutOutputsRequest) -> Empty:
        for item in request.outputs:
            state = self.inputs.get(item.input_id)
            if state is None or state.status == "done":
                continue  # a late output of a cancelled input: Modal drops it too
            result = item.result
            if (
                result.WhichOneof("data_oneof") == "data"
                and len(result.data) > MAX_OBJECT_SIZE_BYTES
            ):
                raise GRPCError(Status.INVALID_ARGUMENT, "output over the inline limit")
            if self.pool is not None:
                self.pool.finished(state.task_id, state.input_id)
            self._end(
                state,
                api_pb2.FunctionGetOutputsItem(
                    result=result,
                    idx=state.idx,
                    input_id=state.input_id,
                    data_format=item.data_format,
                    retry_count=item.retry_count,
                    input_started_at=item.input_started_at,
                    output_created_at=item.output_created_at,
                ),
            )
        return Empty()

    @_reader
    async def TaskResult(self, request: api_pb2.TaskResultRequest) -> Empty:
        return Empty()

    @_reader
    async def ContainerStop(
        self, request: api_pb2.ContainerStopRequest
    ) -> api_pb2.ContainerStopResponse:
        if self.pool is not None:
            await self.pool.kill(request.task_id)
        return api_pb2.ContainerStopResponse()

    def container_lost(self, task_id: str, reason: str) -> None:
        """A container died: its running inputs fail (INTERNAL_FAILURE) so retries may take them."""
        for state in list(self.inputs.values()):
            if state.task_id == task_id and state.status == "running":
                result = api_pb2.GenericResult(
                    status=api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE,
                    exception=reason,
                )
                self._fail(state, result)

    def _fail(self, state: InputState, result: api_pb2.GenericResult) -> None:
        """``state`` failed with ``result`` outside a container's output (a fault, a lost
        container)."""
        self._end(
            state,
            api_pb2.FunctionGetOutputsItem(
                result=result,
                idx=state.idx,
                input_id=state.input_id,
                retry_count=state.retry_count,
                data_format=api_pb2.DATA_FORMAT_PICKLE,
            ),
        )

    def _end(self, state: InputState, output: api_pb2.FunctionGetOutputsItem) -> None:
        """An attempt of ``state`` ended with ``output``: Modal runs the input again where
        its retry policy allows a failed one, else ``output`` is its output."""
        if not self._retry_on_server(state, output.result):
            self._finish(state, output)

    def _retry_on_server(self, state: InputState, result: api_pb2.GenericResult) -> bool:
        """Modal's own retries for spawned inputs (a ``.remote`` call's client retries them).

        A failed input (an exception, a lost container, a timeout) of a function with a
        retry policy runs again, after the policy's delay, as the same input with the next
        ``retry_count``, until the policy's ``retries`` are spent; nobody sees the failed
        attempt's output. Returns True when the input was put back.
        """
        retried = {
            api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
            api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE,
            api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT,
        }
        call = self.function_calls[state.function_call_id]
        policy = self.functions[call.function_id].definition.retry_policy
        if (
            result.status not in retried
            or state.invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
            or call.cancelled
            or state.retry_count >= policy.retries
        ):
            return False
        delay_ms = (
            policy.initial_delay_ms * max(1.0, policy.backoff_coefficient) ** state.retry_count
        )
        if policy.max_delay_ms:
            delay_ms = min(delay_ms, policy.max_delay_ms)
        state.retry_count += 1
        state.status, state.task_id, state.leased_at = "retrying", "", 0.0
        self.server_retries.append(state.input_id)

        async def requeue() -> None:
            await asyncio.sleep(delay_ms / 1000)
            if call.cancelled:
                self._finish(state, _terminated("cancelled while waiting for its retry"))
                return
            state.status = "pending"
            await self._enqueue(call.function_id, [state])

        task = asyncio.get_running_loop().create_task(requeue())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    # -- data streams (generators and web inputs) and web inputs
    def _data_call(
        self, request: api_pb2.FunctionCallGetDataRequest | api_pb2.FunctionCallPutDataRequest
    ) -> CallState:
        if request.WhichOneof("call_info") != "function_call_id":
            # the emulator hands out no attempt tokens (FunctionGetInputsItem.attempt_token)
            raise GRPCError(Status.INVALID_ARGUMENT, "emulator: a data stream needs a call id")
        call = self.function_calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"FunctionCall {request.function_call_id} not found")
        return call

    async def data_chunks(
        self,
        call: CallState,
        variant: str,
        last_index: int = 0,
        idle: float | None = DATA_STREAM_SECONDS,
    ) -> AsyncIterator[api_pb2.DataChunk]:
        """The call's ``data_in`` or ``data_out`` chunks after ``last_index``, as they come.

        Ends once the call's inputs have their outputs and every chunk was given, or after
        ``idle`` seconds with nothing new (Modal's client then asks again from its index;
        None: never).
        """
        forever = idle is None
        idle = idle or 0.0
        deadline = time.monotonic() + idle
        while True:
            changed = call.data_changed.current()
            finished = call.finished  # read before the chunks: none can come after it
            chunks = call.data_in if variant == "data_in" else call.data_out
            fresh = [c for c in chunks if c.index > last_index]
            for chunk in fresh:
                yield chunk
                last_index = chunk.index
            if fresh:
                deadline = time.monotonic() + idle
                continue
            left = None if forever else deadline - time.monotonic()
            if finished or (left is not None and left <= 0):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    async def _serve_data(self, stream: Any, variant: str) -> None:
        request: api_pb2.FunctionCallGetDataRequest = await stream.recv_message()
        call = self._data_call(request)
        async for chunk in self.data_chunks(call, variant, request.last_index):
            await stream.send_message(chunk)

    async def FunctionCallGetDataIn(self, stream: Any) -> None:
        """What the caller streams to an input: a web request's ASGI messages."""
        self.record("FunctionCallGetDataIn")
        await self._serve_data(stream, "data_in")

    async def FunctionCallGetDataOut(self, stream: Any) -> None:
        """What a generator (a web function's ASGI app) put out, from ``last_index`` on."""
        self.record("FunctionCallGetDataOut")
        await self._serve_data(stream, "data_out")

    @_reader
    async def FunctionCallPutDataOut(self, request: api_pb2.FunctionCallPutDataRequest) -> Empty:
        """A generator's items (a web function's ASGI messages), indexed from 1; a chunk
        sent again (a retried RPC) is kept once."""
        call = self._data_call(request)
        known = {c.index for c in call.data_out}
        for chunk in request.data_chunks:
            if chunk.index not in known:
                call.data_out.append(chunk)
                known.add(chunk.index)
        call.data_out.sort(key=lambda c: c.index)
        call.data_changed.notify()
        return Empty()

    async def web_input(
        self, function_id: str, scope: dict[str, Any], *, first_message: bytes
    ) -> CallState:
        """A web request for ``function_id``: a call of one input whose argument is the
        ASGI scope (pickled as ``((scope,), {})``, as Modal's server sends it). Its first
        ``http.request`` message is on ``data_in`` before any container can take the input
        (the runtime answers 408 when none comes within 5 s); the rest of the body comes
        through ``put_data_in``, the response through ``data_out``."""
        from modal._serialization import serialize

        call = CallState(self.new_id("fc"), function_id, "")
        self.function_calls[call.function_call_id] = call
        item = api_pb2.FunctionPutInputsItem(
            idx=0,
            input=api_pb2.FunctionInput(
                args=serialize(((scope,), {})), data_format=api_pb2.DATA_FORMAT_PICKLE
            ),
        )
        state = self._new_input(call, item, api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC)
        self.put_data_in(call, first_message)
        await self._enqueue(function_id, [state])
        return call

    def put_data_in(self, call: CallState, data: bytes) -> None:
        """One more ``data_in`` chunk (an ASGI message) for the call's input."""
        index = len(call.data_in) + 1
        call.data_in.append(
            api_pb2.DataChunk(data_format=api_pb2.DATA_FORMAT_ASGI, data=data, index=index)
        )
        call.data_changed.notify()

    async def expire(self, function_call_id: str) -> None:
        """Forget the call's outputs, as Modal does past its output retention (a test's hook)."""
        self.function_calls[function_call_id].expired = True

    async def hold_answer(self, rpc: str) -> None:
        """Wait out a hold on this answer of ``rpc`` (``WireFaults.hold_rpc``; ``release()``
        ends it early)."""
        seconds = self.faults.rpc_hold(rpc)
        started = time.monotonic()
        while time.monotonic() - started < seconds and self.faults.released_at < started:
            await asyncio.sleep(0.05)

    # -- holding a function's inputs back (a test's hook)
    def is_paused(self, function_id: str) -> bool:
        state = self.functions.get(function_id)
        return state is not None and state.definition.function_name in self.paused

    async def pause(self, function_name: str) -> None:
        """No container takes ``function_name``'s queued inputs (and none starts for them)
        until ``resume``: a job stays pending, as on Modal with no capacity free."""
        self.paused.add(function_name)

    async def resume(self, function_name: str) -> None:
        self.paused.discard(function_name)
        for function_id, state in self.functions.items():
            if state.definition.function_name == function_name:
                async with state.queued:
                    state.queued.notify_all()
                if self.pool is not None:
                    await self.pool.demand(function_id)

    # -- blobs
    @_reader
    async def BlobCreate(self, request: api_pb2.BlobCreateRequest) -> api_pb2.BlobCreateResponse:
        blob_id = self.blobs.new_id()
        url = self.blobs.upload_url(blob_id)
        return api_pb2.BlobCreateResponse(
            blob_ids=[blob_id], upload_urls=api_pb2.UploadUrlList(items=[url])
        )

    @_reader
    async def BlobGet(self, request: api_pb2.BlobGetRequest) -> api_pb2.BlobGetResponse:
        return api_pb2.BlobGetResponse(download_url=self.blobs.download_url(request.blob_id))

    # -- Dict
    @_reader
    async def DictGetOrCreate(
        self, request: api_pb2.DictGetOrCreateRequest
    ) -> api_pb2.DictGetOrCreateResponse:
        name = request.deployment_name
        if name not in self.dict_names:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Dict '{name}' not found")
            dict_id = self.new_id("di")
            self.dict_names[name] = dict_id
            self.dicts[dict_id] = {e.key: e.value for e in request.data}
        return api_pb2.DictGetOrCreateResponse(dict_id=self.dict_names[name])

    def _dict(self, dict_id: str) -> dict[bytes, bytes]:
        if dict_id not in self.dicts:
            raise GRPCError(Status.NOT_FOUND, f"Dict {dict_id} not found")
        return self.dicts[dict_id]

    @_reader
    async def DictUpdate(self, request: api_pb2.DictUpdateRequest) -> api_pb2.DictUpdateResponse:
        data = self._dict(request.dict_id)
        for entry in request.updates:
            if len(entry.value) > MAX_DICT_VALUE_BYTES:
                raise GRPCError(Status.INVALID_ARGUMENT, "Dict value too large")
        if request.if_not_exists and any(e.key in data for e in request.updates):
            return api_pb2.DictUpdateResponse(created=False)
        for entry in request.updates:
            data[entry.key] = entry.value
        return api_pb2.DictUpdateResponse(created=True)

    @_reader
    async def DictGet(self, request: api_pb2.DictGetRequest) -> api_pb2.DictGetResponse:
        data = self._dict(request.dict_id)
        if request.key in data:
            return api_pb2.DictGetResponse(found=True, value=data[request.key])
        return api_pb2.DictGetResponse(found=False)

    @_reader
    async def DictContains(
        self, request: api_pb2.DictContainsRequest
    ) -> api_pb2.DictContainsResponse:
        return api_pb2.DictContainsResponse(found=request.key in self._dict(request.dict_id))

    @_reader
    async def DictPop(self, request: api_pb2.DictPopRequest) -> api_pb2.DictPopResponse:
        data = self._dict(request.dict_id)
        if request.key in data:
            return api_pb2.DictPopResponse(found=True, value=data.pop(request.key))
        return api_pb2.DictPopResponse(found=False)

    @_reader
    async def DictLen(self, request: api_pb2.DictLenRequest) -> api_pb2.DictLenResponse:
        return api_pb2.DictLenResponse(len=len(self._dict(request.dict_id)))

    @_reader
    async def DictClear(self, request: api_pb2.DictClearRequest) -> Empty:
        self._dict(request.dict_id).clear()
        return Empty()

    async def DictContents(self, stream: Any) -> None:
        request: api_pb2.DictContentsRequest = await stream.recv_message()
        self.record("DictContents")
        fault = self.faults.rpc_error("DictContents")
        if fault is not None:
            raise fault
        await self.hold_answer("DictContents")
        for key, value in list(self._dict(request.dict_id).items()):
            await stream.send_message(
                api_pb2.DictEntry(
                    key=key if request.keys else b"", value=value if request.values else b""
                )
            )


def _apply_options(definition: api_pb2.Function, options: api_pb2.FunctionOptions) -> None:
    """What ``with_options`` changes on a bound variant (the fields our app sets)."""
    if options.HasField("timeout_secs"):
        definition.timeout_secs = options.timeout_secs
    if options.HasField("resources"):
        definition.resources.CopyFrom(options.resources)
    if options.HasField("retry_policy"):
        definition.retry_policy.CopyFrom(options.retry_policy)
    if options.HasField("max_concurrent_inputs"):
        definition.max_concurrent_inputs = options.max_concurrent_inputs
    if options.replace_secret_ids:
        del definition.secret_ids[:]
        definition.secret_ids.extend(options.secret_ids)


def _terminated(reason: str) -> api_pb2.FunctionGetOutputsItem:
    return api_pb2.FunctionGetOutputsItem(
        result=api_pb2.GenericResult(
            status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED, exception=reason
        )
    )


def _graph_status(state: InputState) -> int:
    if state.output is None:
        return api_pb2.GenericResult.GENERIC_STATUS_UNSPECIFIED
    return state.output.result.status


# the RPCs Servicer does not define are served by ``_unimplemented`` (see ``__mapping__``)
Servicer.__abstractmethods__ = frozenset()
