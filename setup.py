"""Build hook: generate the gRPC stubs from ``proto/`` before setuptools collects the Python modules.

``protoc`` (from grpcio-tools, a build requirement) writes ``effpose/v1/pose_pb2.py``, ``pose_pb2.pyi`` and
``pose_pb2_grpc.py`` into the source tree, so editable installs import them in place and wheels pick them up.
All metadata lives in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"


def generate_grpc_stubs() -> None:
    """Compile every ``proto/**/*.proto`` into Python messages, type stubs and gRPC stubs under the repository root.

    Imports resolve against ``proto/``, protobuf's well-known types (grpcio-tools) and googleapis-common-protos
    (``google/rpc/status.proto``, shipped beside its ``status_pb2``); the latter two are build requirements.
    """
    import grpc_tools
    from google.rpc import status_pb2
    from grpc_tools import protoc

    protos = sorted(str(path.relative_to(PROTO_DIR)) for path in PROTO_DIR.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(status_pb2.__file__).parents[2]
    outputs = [f"--{kind}_out={ROOT}" for kind in ("python", "pyi", "grpc_python")]
    includes = [f"-I{path}" for path in (PROTO_DIR, well_known, googleapis)]
    if protoc.main(["grpc_tools.protoc", *includes, *outputs, *protos]) != 0:
        raise RuntimeError(f"protoc failed on {protos}")


class BuildPyWithGrpcStubs(build_py):
    """``build_py`` that generates the gRPC stubs first (also run by ``pip install -e``)."""

    def run(self) -> None:
        generate_grpc_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithGrpcStubs})
