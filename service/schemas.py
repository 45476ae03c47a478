"""REST request parameters and response bodies (pydantic models; they are also the OpenAPI documentation)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AllowInfNan, BaseModel, Field, TypeAdapter, ValidationError, WithJsonSchema, field_validator

from service.errors import InvalidParameters

FiniteFloat = Annotated[float, AllowInfNan(False)]
Box = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description="x1, y1, x2, y2")]
Boxes = list[Box]
MAX_TIMEOUT_MS = 600_000


class PoseParams(BaseModel):
    """Query parameters of ``POST /v1/pose``."""

    boxes: Annotated[Boxes | None, WithJsonSchema({"type": "string", "examples": ["[[40,30,260,420]]"]})] = Field(
        None, description="client person boxes as a JSON string, e.g. [[x1,y1,x2,y2], ...] in original-image "
                          "pixels; skips the detector. Bad JSON, NaN, infinities or lists of other than 4 numbers "
                          "are a 422; each box is clipped to the image, and one that misses it is a 400")
    det_threshold: float | None = Field(None, ge=0.0, le=1.0, description="detector score threshold")
    keypoint_threshold: float = Field(0.3, ge=0.0, le=1.0,
                                      description="marks keypoints 'visible' and limits drawing; never zeroes them")
    max_persons: int | None = Field(None, ge=1, description="at most this many detected persons")
    flip: bool | None = Field(None, description="flip test (slower, a little more accurate)")
    format: Literal["json", "coco"] = Field("json", description="coco: a COCO keypoint results list")
    image_id: int = Field(0, description="image_id written into format=coco results")
    render: Literal["none", "png", "jpeg"] = Field("none", description="return the image with skeletons drawn")
    model: str | None = Field(None, max_length=200, description="a served pose model's name (GET /v1/models); "
                                                                "default: the default model")
    model_version: str | None = Field(None, max_length=200, description="when given, the model's version must be "
                                                                        "this (else 404)")
    timeout_ms: float | None = Field(None, gt=0, le=MAX_TIMEOUT_MS, description="deadline of this request")

    @field_validator("boxes", mode="before")
    @classmethod
    def _parse_json(cls, value: object) -> object:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]  # a single query value arrives as a one-element list
        return boxes_json(value) if isinstance(value, str) else value


def boxes_json(text: str) -> object:
    """The JSON of a ``boxes`` parameter (NaN and Infinity are refused later as non-finite numbers)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"boxes must be JSON such as [[10,20,110,220]]: {error}") from error


_BOXES = TypeAdapter(Boxes)


def parse_boxes_field(text: str) -> list[list[float]]:
    """A multipart ``boxes`` field, validated exactly as the query parameter (else :class:`InvalidParameters`)."""
    try:
        return _BOXES.validate_python(boxes_json(text))
    except (ValueError, ValidationError) as error:
        raise InvalidParameters(f"multipart field boxes: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'boxes'}: {e['msg']}" for e in error.errors()[:3])
    return str(error)


class Keypoint(BaseModel):
    name: str
    x: float
    y: float
    score: float
    visible: bool = Field(description="score >= keypoint_threshold")


class Person(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in original-image pixels")
    box_score: float
    source: Literal["detector", "client"]
    score: float = Field(description="box score x mean confident keypoint score")
    keypoints: list[Keypoint]


class ModelRef(BaseModel):
    name: str
    version: str
    detector: str


class ImageSize(BaseModel):
    width: int
    height: int


class PoseResponse(BaseModel):
    request_id: str
    model: ModelRef
    image: ImageSize
    keypoint_names: list[str]
    skeleton: list[list[int]]
    persons: list[Person]
    timings_ms: dict[str, float] = Field(description="decode, detect, queue, pose, total")


class PoseModelInfo(BaseModel):
    name: str = Field(description="the served name: its ONNX file name without .onnx; requests choose it by this")
    architecture: str = Field(description="the network, e.g. efficientpose_a")
    version: str
    weights: str
    input_size: ImageSize
    keypoint_names: list[str]
    skeleton: list[list[int]]


class ModelsResponse(BaseModel):
    effpose_version: str
    pose: PoseModelInfo = Field(description="the default model (requests that name none)")
    models: list[PoseModelInfo] = Field(description="every served pose model, the default included")
    detector: str


class CocoResult(BaseModel):
    """One entry of a COCO keypoint results list (``format=coco``)."""

    image_id: int
    category_id: int
    keypoints: list[float] = Field(description="x, y, score for each of the 17 keypoints")
    score: float
    bbox: list[float] = Field(description="x, y, width, height")


class ErrorBody(BaseModel):
    reason: str = Field(description="short machine-readable label, e.g. bad_request, invalid_parameters, "
                                    "not_an_image, too_large, overloaded, draining, deadline, not_found")
    message: str = Field(description="what went wrong, for people")


class ErrorResponse(BaseModel):
    """The one shape of every non-2xx answer."""

    error: ErrorBody


class StatusResponse(BaseModel):
    status: str
