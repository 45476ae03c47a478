"""Several pose models served at once from a model repository, chosen per request over REST, gRPC and the stream."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from effpose.assets import DEFAULT_PERSON_DETECTOR
from effpose.v1 import pose_pb2, pose_pb2_grpc
from service.core import InferenceCore
from service.settings import Settings
from tests.service_support import assert_rich_status, call_status, encode, running_service

BOX = [20.0, 10.0, 140.0, 230.0]
IMAGE = encode(np.random.default_rng(0).integers(0, 255, (240, 160, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def repository(random_model_a, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of two pose models (the same random A net at 256x192 and at 128x96) and a person detector,
    which the service must skip as a pose model."""
    from effpose.export import export_onnx

    folder = tmp_path_factory.mktemp("repository")
    export_onnx(random_model_a, folder / "a_256x192.onnx", input_size=(192, 256), weights="random-init")
    export_onnx(random_model_a, folder / "a_128x96.onnx", input_size=(96, 128), weights="random-init",
                version="2.0.0")
    shutil.copy(DEFAULT_PERSON_DETECTOR, folder / "person_detector.onnx")
    return folder


@pytest.fixture(scope="module")
def service(repository: Path):
    with running_service(model_repository=repository, pose_model=repository / "a_256x192.onnx") as running:
        yield running


@pytest.fixture()
def client(service):
    with httpx.Client(base_url=service.base_url, timeout=30.0) as http:
        yield http


def pose(client: httpx.Client, **params: object) -> httpx.Response:
    return client.post("/v1/pose", content=IMAGE, headers={"content-type": "image/jpeg"},
                       params={"boxes": f"[{BOX}]", **params})


def test_models_lists_every_pose_model_and_the_default(client):
    models = client.get("/v1/models").json()
    assert [model["name"] for model in models["models"]] == ["a_128x96", "a_256x192"]
    assert models["pose"]["name"] == "a_256x192"  # pose_model is in the repository: it is the default
    sizes = {model["name"]: model["input_size"] for model in models["models"]}
    assert sizes == {"a_128x96": {"width": 96, "height": 128}, "a_256x192": {"width": 192, "height": 256}}
    assert {model["architecture"] for model in models["models"]} == {"efficientpose_a"}


def test_a_request_chooses_its_model_and_the_answer_names_it(client):
    default, small = pose(client).json(), pose(client, model="a_128x96").json()
    assert default["model"]["name"] == "a_256x192" and small["model"] == {
        "name": "a_128x96", "version": "2.0.0", "detector": "whole-image"}
    assert pose(client, model="a_128x96", model_version="2.0.0").status_code == 200
    points = [np.array([[kp["x"], kp["y"]] for kp in answer["persons"][0]["keypoints"]]) for answer in (default, small)]
    assert not np.allclose(*points)  # two different networks answered


@pytest.mark.parametrize("params", [{"model": "nope"}, {"model": "a_128x96", "model_version": "9"},
                                    {"model": "person_detector"}])
def test_an_unknown_model_or_version_is_a_404_envelope(client, params):
    answer = pose(client, **params)
    assert answer.status_code == 404 and answer.json()["error"]["reason"] == "model_not_found"
    assert pose(client).status_code == 200  # and the server keeps serving


def test_grpc_lists_and_chooses_models(service):
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = pose_pb2_grpc.PoseServiceStub(channel)
        listed = stub.ListModels(pose_pb2.ListModelsRequest(), timeout=10)
        assert [m.name for m in listed.models] == ["a_128x96", "a_256x192"] and listed.default_model == "a_256x192"
        assert stub.GetModel(pose_pb2.GetModelRequest(model="a_128x96"), timeout=10).input_width == 96
        request = pose_pb2.EstimateRequest(image=IMAGE, boxes=[pose_pb2.Box(x1=20, y1=10, x2=140, y2=230)],
                                           model="a_128x96")
        assert stub.Estimate(request, timeout=30).model.name == "a_128x96"
        frames = [pose_pb2.Frame(frame_id=i, request=pose_pb2.EstimateRequest(
            image=IMAGE, boxes=request.boxes, model=name)) for i, name in enumerate(["a_128x96", "", "nope"])]
        results = list(stub.StreamEstimate(iter(frames), timeout=30))
        assert [r.response.model.name for r in results[:2]] == ["a_128x96", "a_256x192"]
        assert results[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetModel(pose_pb2.GetModelRequest(model="nope"), timeout=10)
        assert_rich_status(call_status(failed.value), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", field="model")


def test_settings_select_models_of_the_repository(repository: Path):
    with running_service(model_repository=repository, models=["a_128x96"]) as running:
        with httpx.Client(base_url=running.base_url, timeout=30.0) as client:
            assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["a_128x96"]
    with pytest.raises(ValueError, match="not set"):
        Settings(models=["a_128x96"])


def test_a_detector_given_as_the_pose_model_is_refused_clearly():
    with pytest.raises(ValueError, match="person_detector model, not a pose model"):
        InferenceCore(Settings(pose_model=DEFAULT_PERSON_DETECTOR, detector_model=None, threads=1))
