"""gRPC messages of the Open Inference Protocol (``proto/effpose/v2/inference.proto``): ``inference_pb2`` is
generated here by the package build (``setup.py``), never committed; ``from effpose.v2 import inference_pb2``."""
