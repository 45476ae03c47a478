"""The Open Inference Protocol (KServe v2) over REST and gRPC, driven by the real tritonclient clients on loopback."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from effpose import __version__
from effpose.runtime import PoseEstimator
from tests.service_support import encode, running_service

BOXES = np.array([[20.0, 10.0, 140.0, 230.0], [150.0, 30.0, 300.0, 220.0]], np.float32)
IMAGE = encode(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8))
CLIENTS = {"http": triton_http, "grpc": triton_grpc}


@pytest.fixture(scope="module")
def service(random_onnx_a: Path):
    with running_service(pose_model=random_onnx_a) as running:
        yield running


@pytest.fixture(params=sorted(CLIENTS))
def protocol(request) -> str:
    return request.param


def client_for(service, protocol: str):
    target = service.base_url.removeprefix("http://") if protocol == "http" else service.grpc_target
    return CLIENTS[protocol].InferenceServerClient(target)


def image_inputs(module, boxes: np.ndarray | None = BOXES) -> list:
    image = module.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([IMAGE], dtype=object))
    if boxes is None:
        return [image]
    box_input = module.InferInput("boxes", list(boxes.shape), "FP32")
    box_input.set_data_from_numpy(boxes)
    return [image, box_input]


def v1_keypoints(service, **params: object) -> np.ndarray:
    answer = httpx.post(f"{service.base_url}/v1/pose", content=IMAGE, headers={"content-type": "image/jpeg"},
                        params=params, timeout=30).json()
    return np.array([[[kp["x"], kp["y"], kp["score"]] for kp in person["keypoints"]] for person in answer["persons"]])


def test_health_and_metadata(service, protocol):
    client = client_for(service, protocol)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("effpose-pose")
    server = client.get_server_metadata()
    name = server["name"] if protocol == "http" else server.name
    assert name == "effpose"
    if protocol == "http":
        pipeline = client.get_model_metadata("effpose-pose")
        assert pipeline["versions"] == [__version__]
        assert {t["name"]: t["shape"] for t in pipeline["outputs"]} == {"keypoints": [-1, 17, 3], "boxes": [-1, 5]}
        network = client.get_model_metadata("a")  # the served model's raw network, named after its file
        assert network["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 256, 192]}]
    else:
        network = client.get_model_metadata("a")
        assert (network.inputs[0].name, list(network.inputs[0].shape)) == ("input", [-1, 3, 256, 192])
        assert list(network.outputs[0].shape) == [-1, 17, 64, 48]


def test_the_pipeline_answers_what_v1_answers(service, protocol):
    module = CLIENTS[protocol]
    result = client_for(service, protocol).infer("effpose-pose", image_inputs(module))
    keypoints, boxes = result.as_numpy("keypoints"), result.as_numpy("boxes")
    assert keypoints.shape == (2, 17, 3) and boxes.shape == (2, 5)
    np.testing.assert_allclose(boxes[:, :4], BOXES)
    np.testing.assert_allclose(boxes[:, 4], 1.0)
    expected = v1_keypoints(service, boxes=json.dumps(BOXES.tolist()))
    np.testing.assert_allclose(keypoints, expected, atol=0.01)  # /v1/pose rounds to 2 decimals


def test_pipeline_parameters_and_the_detector(service, protocol):
    module = CLIENTS[protocol]
    client = client_for(service, protocol)
    whole = client.infer("effpose-pose", image_inputs(module, boxes=None), parameters={"flip": True})
    assert whole.as_numpy("boxes").tolist() == [[0.0, 0.0, 320.0, 240.0, 1.0]]  # the whole-image "detector"
    np.testing.assert_allclose(whole.as_numpy("keypoints"), v1_keypoints(service, flip=True), atol=0.01)


def test_the_raw_network_computes_the_models_heatmaps(service, protocol, random_onnx_a):
    module = CLIENTS[protocol]
    crops = np.random.default_rng(2).standard_normal((3, 3, 256, 192)).astype(np.float32)
    tensor = module.InferInput("input", list(crops.shape), "FP32")
    tensor.set_data_from_numpy(crops)
    heatmaps = client_for(service, protocol).infer("a", [tensor]).as_numpy("heatmaps")
    expected = PoseEstimator(random_onnx_a, intra_op_threads=1).run(crops)
    np.testing.assert_allclose(heatmaps, expected, atol=1e-4)


def test_errors_map_to_the_protocol(service, protocol):
    module = CLIENTS[protocol]
    client = client_for(service, protocol)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", image_inputs(module))
    wrong = module.InferInput("input", [1, 3, 32, 32], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException, match="must have shape"):
        client.infer("a", [wrong])
    with pytest.raises(InferenceServerException, match="not a supported image|cannot identify|not an image"):
        bad = module.InferInput("image", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image"], dtype=object))
        client.infer("effpose-pose", [bad])
    assert client.is_server_live()  # and the server keeps serving
    route = "/v2/models/{name}/infer" if protocol == "http" else "/inference.GRPCInferenceService/ModelInfer"
    metrics = httpx.get(f"{service.base_url}/metrics", timeout=10).text
    assert f'route="{route}"' in metrics  # answers of both protocols are counted like /v1's


def test_json_requests_versions_and_the_error_shape(service):
    url = f"{service.base_url}/v2/models/effpose-pose"
    document = {"id": "r1", "inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(IMAGE).decode()]},
        {"name": "boxes", "datatype": "FP32", "shape": [2, 4], "data": BOXES.tolist()}]}
    answer = httpx.post(f"{url}/versions/{__version__}/infer", json=document, timeout=30)
    assert answer.status_code == 200 and answer.json()["id"] == "r1"
    keypoints = next(o for o in answer.json()["outputs"] if o["name"] == "keypoints")
    assert keypoints["shape"] == [2, 17, 3] and len(keypoints["data"]) == 2 * 17 * 3
    for body, content, status in [(document, None, 404), (None, b"{not json", 400),
                                  ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["x"]}]},
                                   None, 400)]:
        target = f"{url}/versions/9.9/infer" if status == 404 else f"{url}/infer"
        failed = httpx.post(target, json=body, content=content, timeout=30)
        assert failed.status_code == status and isinstance(failed.json()["error"], str), failed.text
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 99}}]}).encode()
    short = httpx.post(f"{url}/infer", content=header + b"abc", timeout=30,
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
