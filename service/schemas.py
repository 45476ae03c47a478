"""REST request parameters and response bodies (pydantic models; they are also the OpenAPI documentation)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class PoseParams(BaseModel):
    """Query parameters of ``POST /v1/pose``."""

    boxes: list[list[float]] | None = Field(
        None, description='client person boxes as JSON, e.g. [[x1,y1,x2,y2], ...]; skips the detector')
    det_threshold: float | None = Field(None, ge=0.0, le=1.0, description="detector score threshold")
    keypoint_threshold: float = Field(0.3, ge=0.0, le=1.0,
                                      description="marks keypoints 'visible' and limits drawing; never zeroes them")
    max_persons: int | None = Field(None, ge=1, description="at most this many detected persons")
    flip: bool | None = Field(None, description="flip test (slower, a little more accurate)")
    format: Literal["json", "coco"] = Field("json", description="coco: a COCO keypoint results list")
    image_id: int = Field(0, description="image_id written into format=coco results")
    render: Literal["none", "png", "jpeg"] = Field("none", description="return the image with skeletons drawn")
    timeout_ms: float | None = Field(None, gt=0, le=600_000, description="deadline of this request")

    @field_validator("boxes", mode="before")
    @classmethod
    def _parse_json(cls, value: object) -> object:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]  # a single query value arrives as a one-element list
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"boxes must be JSON such as [[10,20,110,220]]: {error}") from error
        return value


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
    name: str
    version: str
    weights: str
    input_size: ImageSize
    keypoint_names: list[str]
    skeleton: list[list[int]]


class ModelsResponse(BaseModel):
    effpose_version: str
    pose: PoseModelInfo
    detector: str


class ErrorBody(BaseModel):
    reason: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
