"""Every setting of the service, read from ``EFFPOSE_*`` environment variables (one pydantic-settings object)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from effpose.assets import DEFAULT_POSE_MODEL, default_person_detector
from service.cpus import available_cpus


class Settings(BaseSettings):
    """Service configuration; e.g. ``EFFPOSE_HTTP_PORT=9000`` sets ``http_port``."""

    model_config = SettingsConfigDict(env_prefix="EFFPOSE_", frozen=True)

    # Network
    host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535)

    # Models
    pose_model: Path = Field(DEFAULT_POSE_MODEL, description="the pose model, served alone unless model_repository "
                                                             "is set; also the default model of a repository that "
                                                             "holds it")
    model_repository: Path | None = Field(None, description="folder of pose models (ONNX files with their cards) to "
                                                            "serve at once; requests choose one by name (the file "
                                                            "name without .onnx). Detector files there are skipped")
    models: list[str] | None = Field(None, description="serve only these models of the repository (JSON list)")
    default_model: str | None = Field(None, description="the model of requests that name none; default: pose_model's "
                                                        "when served, else the first name in order")
    providers: str = Field("cpu", description="cpu, cuda or auto")
    threads: int = Field(default_factory=available_cpus, ge=1, description="ONNX Runtime intra-op threads per model")
    flip: bool = Field(False, description="flip test by default (requests may override)")
    decode: Literal["quarter", "dark"] | None = Field(
        None, description="sub-pixel refinement of the heatmaps; default: each model's own (its ONNX metadata)")

    # Detector stage
    detector: Literal["auto", "onnx", "whole-image"] = Field(
        "auto", description="auto: the ONNX detector when there is a detector_model (by default the shipped one), "
                            "else the whole image as one person")
    detector_model: Path | None = Field(default_factory=default_person_detector,
                                        description="person detector ONNX; default: the shipped one")
    detector_layout: Literal["auto", "yolox", "yolov8", "effpose"] = "auto"
    det_threshold: float | None = Field(None, ge=0.0, le=1.0, description="detector score threshold; default: the "
                                        "detector's calibrated one (its ONNX metadata)")
    nms_iou: float = Field(0.45, gt=0.0, le=1.0)
    max_persons: int = Field(20, ge=1, le=1000)

    # Batcher
    batching: bool = True
    max_batch_size: int = Field(16, ge=1, le=1024, description="crops per model batch")
    max_queue_delay_ms: float = Field(4.0, ge=0.0, le=10_000.0)
    max_queue_length: int = Field(64, ge=1, description="queued crop chunks before requests are refused")
    max_in_flight: int = Field(64, ge=1, description="requests admitted at once (decode to answer); the next is "
                                                     "refused with 429 before its image is decoded")
    latency_target_s: float = Field(2.0, gt=0.0, description="admit a request only when the work in flight lets it "
                                                             "finish within this (and its deadline); else 429 at once")
    request_timeout_s: float = Field(10.0, gt=0.0, description="default deadline of a request")
    cpu_workers: int = Field(default_factory=available_cpus, ge=1, description="threads for decode/detect/crop")
    worker_niceness: int = Field(5, ge=0, le=19, description="nice value added to the work threads (CPU pool, "
                                                             "model, ONNX Runtime) so that the event loop (health, "
                                                             "admission, answers) runs first; 0: off")

    # Input limits
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    pixel_budget: int = Field(80_000_000, ge=1, description="decoded pixels of all requests at once; a request waits "
                                                            "(until its deadline) for room for its image's pixels")
    jpeg_draft_pixels: int = Field(12_000_000, ge=1, description="JPEGs with more pixels are decoded reduced (1/2, "
                                                                 "1/4 or 1/8) to at most this many; results stay in "
                                                                 "original-image pixels")
    max_client_boxes: int = Field(100, ge=1)
    max_http_connections: int = Field(1000, ge=1, description="open HTTP connections beyond this get 503 at once")

    # Lifecycle
    drain_timeout_s: float = Field(20.0, ge=0.0, description="wait this long for in-flight requests on SIGTERM")
    stream_window: int = Field(4, ge=1, le=64, description="frames of one gRPC stream in flight at once")
    log_level: str = "info"

    @field_validator("detector_model", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        """``EFFPOSE_DETECTOR_MODEL=`` (empty) means no detector model, not the current directory."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _detector_needs_model(self) -> Settings:
        if self.detector == "onnx" and self.detector_model is None:
            raise ValueError("EFFPOSE_DETECTOR=onnx needs EFFPOSE_DETECTOR_MODEL (path to the detector ONNX)")
        return self

    @model_validator(mode="after")
    def _largest_image_fits_the_budget(self) -> Settings:
        if self.pixel_budget < self.max_image_pixels:
            raise ValueError(f"EFFPOSE_PIXEL_BUDGET ({self.pixel_budget}) must be at least EFFPOSE_MAX_IMAGE_PIXELS "
                             f"({self.max_image_pixels}), or the largest images could never be decoded")
        return self

    @model_validator(mode="after")
    def _models_need_a_repository(self) -> Settings:
        if self.models is not None and self.model_repository is None:
            raise ValueError("EFFPOSE_MODELS selects models of EFFPOSE_MODEL_REPOSITORY, which is not set")
        return self

    @property
    def detector_kind(self) -> str:
        """The detector stage to build, with ``auto`` resolved."""
        if self.detector == "auto":
            return "whole-image" if self.detector_model is None else "onnx"
        return self.detector
