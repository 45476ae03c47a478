"""The Open Inference Protocol (KServe v2) over REST, beside ``/v1``: health, server and model metadata, model
readiness and inference, with the binary tensor data extension, for the models of :mod:`service.v2_models`.

Errors answer the protocol's shape, ``{"error": "<message>"}``, with the service's status codes (400 bad input,
404 unknown model, 429 overloaded with ``Retry-After``, 503 not ready or draining, 504 deadline).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from effpose import __version__
from service.core import InferenceCore
from service.errors import BadRequest, ServiceError
from service.v2_models import V2Model, V2Models, checked_inputs, metadata
from service.v2_tensors import datatype_of, from_json, from_raw, to_json, to_raw

#: Request and response header that splits a body into its JSON header and the binary tensor data after it.
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], include_in_schema=False)


async def v2_models(request: Request) -> V2Models:
    """Dependency: the v2 models, handed to every request by the app's lifespan."""
    return request.state.v2_models


Models = Annotated[V2Models, Depends(v2_models)]


def serving(request: Request) -> bool:
    """Whether the service is ready for traffic (its inference core, from the app's lifespan state)."""
    core: InferenceCore = request.state.core
    return core.serving


def v2_error(error: ServiceError) -> JSONResponse:
    """A service error in the protocol's shape."""
    headers = {"Retry-After": str(max(1, round(error.retry_after)))} if error.retry_after is not None else None
    return JSONResponse({"error": error.message}, status_code=error.http_status, headers=headers)


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions supported."""
    return {"name": "effpose", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live")
async def live() -> Response:
    """Liveness: 200 while the process answers."""
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """Readiness: 200 when the models are loaded and warm and the service is not draining, else 503."""
    return Response(status_code=200 if serving(request) else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, models: Models, version: str | None = None) -> Response:
    """A model's metadata: versions, platform, inputs and outputs."""
    try:
        return JSONResponse(metadata(models.get(name, version)))
    except ServiceError as error:
        return v2_error(error)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, models: Models, version: str | None = None) -> Response:
    """200 when the model is served and the service ready, 404 for an unknown model, 503 while not ready."""
    try:
        models.get(name, version)
    except ServiceError as error:
        return v2_error(error)
    return Response(status_code=200 if serving(request) else 503)


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, models: Models, version: str | None = None) -> Response:
    """Inference: a JSON request, or with ``Inference-Header-Content-Length`` a JSON header followed by the binary
    tensor data; binary outputs when an output asks (``binary_data``) or the request does (``binary_data_output``)."""
    try:
        model = models.get(name, version)
        document, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        inputs = checked_inputs(model, read_inputs(document, binary))
        parameters = document.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest("parameters must be an object")
        outputs = await model.infer(inputs, parameters, timeout_s=None)
        return infer_response(model, document, outputs, parameters.get("binary_data_output") is True)
    except ServiceError as error:
        return v2_error(error)


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON document and the binary data after it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} must be the JSON header's length in bytes, at most the body's "
                             f"{len(body)}; got {header_length!r}")
        json_part, binary = body[:int(header_length)], body[int(header_length):]
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"the inference request is not JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise BadRequest("the inference request must be an object with an 'inputs' list")
    return document, binary


def read_inputs(document: dict[str, Any], binary: bytes) -> dict[str, Any]:
    """The input tensors by name: JSON ``data``, or ``binary_data_size`` bytes of the binary part each, in order."""
    inputs, offset = {}, 0
    for tensor in document["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest("every input must be an object with a name, datatype, shape and data")
        name, parameters = tensor["name"], tensor.get("parameters") or {}
        if name in inputs:
            raise BadRequest(f"input {name!r} given twice", field=name)
        if not isinstance(parameters, dict):
            raise BadRequest(f"input {name!r}: parameters must be an object", field=name)
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        size = parameters.get("binary_data_size")
        if size is None:
            inputs[name] = from_json(name, datatype, shape, tensor.get("data"), parameters)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} bytes of "
                             "binary data", field=name)
        inputs[name] = from_raw(name, datatype, shape, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return inputs


def infer_response(model: V2Model, document: dict[str, Any], outputs: dict[str, Any],
                   binary_default: bool) -> Response:
    """The inference response: the requested outputs (all when none are named), binary where asked."""
    requested = document.get("outputs")
    if requested is None:
        requested = [{"name": spec.name} for spec in model.outputs]
    if not isinstance(requested, list) or not all(isinstance(r, dict) and r.get("name") in outputs
                                                  for r in requested):
        raise BadRequest(f"outputs must name outputs of model {model.name!r}: {', '.join(outputs)}")
    entries, chunks = [], []
    for output in requested:
        array = outputs[output["name"]]
        entry = {"name": output["name"], "datatype": datatype_of(array), "shape": list(array.shape)}
        if (output.get("parameters") or {}).get("binary_data", binary_default):
            raw = to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_json(array)
        entries.append(entry)
    body = {"model_name": model.name, "model_version": model.version, "outputs": entries}
    if isinstance(document.get("id"), str):
        body["id"] = document["id"]
    if not chunks:
        return JSONResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})
