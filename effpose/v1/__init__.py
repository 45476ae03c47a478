"""gRPC contract ``effpose.v1`` (``proto/effpose/v1/pose.proto``): ``pose_pb2`` and ``pose_pb2_grpc`` are generated
here by the package build (``setup.py``), never committed; ``from effpose.v1 import pose_pb2, pose_pb2_grpc``."""
