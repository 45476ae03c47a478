"""The Open Inference Protocol (KServe v2) over gRPC: ``inference.GRPCInferenceService`` (ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer) for the models of :mod:`service.v2_models`.

The messages are ``effpose.v2`` (``proto/effpose/v2/inference.proto``, wire-compatible with the protocol's); the
handlers are registered under the protocol's service name. Inputs come as ``raw_input_contents`` or typed
``contents``; outputs go back as ``raw_output_contents`` (what tritonclient reads). A service error ends the call
with its gRPC code and message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message

from effpose import __version__
from effpose.v2 import inference_pb2 as v2
from service.core import InferenceCore
from service.errors import BadRequest, ServiceError
from service.metrics import ServiceMetrics
from service.v2_models import DATATYPES, V2Models, checked_inputs, metadata
from service.v2_rest import EXTENSIONS
from service.v2_tensors import checked_shape, datatype_of, from_raw, to_raw

SERVICE_NAME = "inference.GRPCInferenceService"
#: ``InferTensorContents`` field of each data type (FP16 travels only as raw bytes).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class InferenceServicer:
    """``inference.GRPCInferenceService`` over an :class:`InferenceCore` (see the module docstring)."""

    def __init__(self, core: InferenceCore, metrics: ServiceMetrics):
        self.core, self.metrics = core, metrics
        self.models = V2Models(core)

    async def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Message:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        return v2.ServerReadyResponse(ready=self.core.serving)

    async def ServerMetadata(self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        return v2.ServerMetadataResponse(name="effpose", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        self.models.get(request.name, request.version or None)
        return v2.ModelReadyResponse(ready=self.core.serving)

    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        return v2.ModelMetadataResponse(**metadata(self.models.get(request.name, request.version or None)))

    async def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext) -> Message:
        model = self.models.get(request.model_name, request.model_version or None)
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        inputs = {}
        for index, tensor in enumerate(request.inputs):
            if tensor.name in inputs:
                raise BadRequest(f"input {tensor.name!r} given twice", field=tensor.name)
            inputs[tensor.name] = (from_raw(tensor.name, tensor.datatype, list(tensor.shape), raw[index]) if raw
                                   else from_contents(tensor))
        parameters = {name: parameter_value(value) for name, value in request.parameters.items()}
        outputs = await model.infer(checked_inputs(model, inputs), parameters, context.time_remaining())
        names = [output.name for output in request.outputs] or [spec.name for spec in model.outputs]
        unknown = [name for name in names if name not in outputs]
        if unknown:
            raise BadRequest(f"model {model.name!r} has no output {unknown[0]!r} (outputs: {', '.join(outputs)})")
        response = v2.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        for name in names:
            array = outputs[name]
            response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            response.raw_output_contents.append(to_raw(array))
        return response


def from_contents(tensor: v2.ModelInferRequest.InferInputTensor) -> np.ndarray:
    """An input tensor from its typed ``contents``."""
    shape = checked_shape(tensor.name, tensor.datatype, list(tensor.shape))
    if tensor.datatype not in CONTENTS_FIELDS:
        raise BadRequest(f"input {tensor.name!r}: {tensor.datatype} must be sent as raw_input_contents",
                         field=tensor.name)
    values = list(getattr(tensor.contents, CONTENTS_FIELDS[tensor.datatype]))
    if len(values) != int(np.prod(shape)):
        raise BadRequest(f"input {tensor.name!r}: {len(values)} elements for shape {list(shape)}", field=tensor.name)
    array = np.empty(len(values), dtype=DATATYPES[tensor.datatype])
    array[:] = values
    return array.reshape(shape)


def parameter_value(parameter: v2.InferParameter) -> Any:
    """The value an ``InferParameter`` holds (None when it holds none)."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``inference.GRPCInferenceService`` on ``server``: each method parses its ``effpose.v2`` request,
    runs the servicer's method, counts the answer and turns a service error into the call's status."""
    methods = {
        "ServerLive": v2.ServerLiveRequest, "ServerReady": v2.ServerReadyRequest,
        "ServerMetadata": v2.ServerMetadataRequest, "ModelReady": v2.ModelReadyRequest,
        "ModelMetadata": v2.ModelMetadataRequest, "ModelInfer": v2.ModelInferRequest,
    }
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            _answering(method, getattr(servicer, method), servicer.metrics),
            request_deserializer=request_type.FromString, response_serializer=_serialized)
        for method, request_type in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


Handler = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]


def _serialized(message: Message) -> bytes:
    return message.SerializeToString()


def _answering(method: str, handler: Handler, metrics: ServiceMetrics) -> Handler:
    async def answer(request: Message, context: grpc.aio.ServicerContext) -> Message:
        started, code = time.monotonic(), "OK"
        try:
            return await handler(request, context)
        except ServiceError as error:
            code = error.grpc_code
            await context.abort(grpc.StatusCode[error.grpc_code], error.message)
        finally:
            metrics.observe_answer(f"/{SERVICE_NAME}/{method}", "grpc", code, time.monotonic() - started,
                                   code == "OK")

    return answer
