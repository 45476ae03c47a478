"""Example client of ``effpose.v1.PoseService`` (stubs: ``from effpose.v1 import pose_pb2, pose_pb2_grpc``).

    python examples/grpc_client.py photo.jpg [--box 40,30,260,420] [--target localhost:50051]
    python examples/grpc_client.py --stream video.mp4 [--smooth]          # a video file, through OpenCV
    python examples/grpc_client.py --stream frame_000.jpg frame_001.jpg   # a list of frames (--fps sets their times)

A failed call prints its status code, message and rich error details (google.rpc.Status: the reason, when to retry,
the request field at fault) to stderr and exits with 1; a failed frame of a stream prints the same and the stream
goes on.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from effpose.v1 import pose_pb2, pose_pb2_grpc

CODES = {code.value[0]: code for code in grpc.StatusCode}
DETAILS: dict[type[Message], Callable[[Message], list[str]]] = {  # how each kind of error detail is shown
    error_details_pb2.ErrorInfo: lambda info: [f"reason {info.reason} ({info.domain})"],
    error_details_pb2.RetryInfo: lambda retry: [f"retry after {retry.retry_delay.ToTimedelta().total_seconds():g} s"],
    error_details_pb2.BadRequest: lambda bad: [f"field {v.field}: {v.description}" for v in bad.field_violations],
}


def print_persons(response: pose_pb2.EstimateResponse) -> None:
    """One line per person, then one per keypoint."""
    for person in response.persons:
        box = person.box
        print(f"person ({person.source}) score {person.score:.3f} box {box.x1:.0f},{box.y1:.0f},{box.x2:.0f},{box.y2:.0f}")
        for keypoint in person.keypoints:
            print(f"  {keypoint.name:15s} {keypoint.x:8.1f} {keypoint.y:8.1f}  {keypoint.score:.3f}")


def describe(status: status_pb2.Status) -> str:
    """A failed call or frame: the code's name and the message, then one indented line per error detail."""
    name = CODES[status.code].name if status.code in CODES else f"code {status.code}"
    lines = [f"{name}: {status.message}"]
    for detail in status.details:
        for kind, show in DETAILS.items():
            message = kind()
            if detail.Unpack(message):
                lines += [f"  {line}" for line in show(message)]
                break
        else:
            lines.append(f"  {detail.type_url}")
    return "\n".join(lines)


def call_status(error: grpc.RpcError) -> status_pb2.Status:
    """The rich status of a failed call; a plain one (code and message) when the server sent no details."""
    return rpc_status.from_call(error) or status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def frames(paths: list[Path], fps: float) -> Iterator[tuple[bytes, float]]:
    """(encoded image, timestamp in seconds) of each frame: a video file (at its own frame rate when it has one)
    or a list of image files at ``fps``."""
    if len(paths) > 1:
        yield from ((path.read_bytes(), index / fps) for index, path in enumerate(paths))
        return
    capture = cv2.VideoCapture(str(paths[0]))
    fps = capture.get(cv2.CAP_PROP_FPS) or fps
    try:
        for index in itertools.count():
            ok, image = capture.read()
            if not ok:
                return
            yield cv2.imencode(".jpg", image)[1].tobytes(), index / fps
    finally:
        capture.release()


def stream(stub: pose_pb2_grpc.PoseServiceStub, paths: list[Path], fps: float, smooth: bool) -> None:
    """Send the frames as one stream (smoothing options on the first frame) and print a line per result."""
    options = pose_pb2.StreamOptions(smoothing=pose_pb2.Smoothing(enabled=smooth))
    requests = (pose_pb2.Frame(frame_id=index, request=pose_pb2.EstimateRequest(image=image), timestamp_s=time,
                               options=options if index == 0 else None)
                for index, (image, time) in enumerate(frames(paths, fps)))
    for result in stub.StreamEstimate(requests):
        if result.HasField("error"):
            print(f"frame {result.frame_id}: {describe(result.error)}")
            continue
        people = ", ".join(f"#{p.track_id} {p.score:.2f}" for p in result.response.persons)
        print(f"frame {result.frame_id}: {len(result.response.persons)} person(s) [{people}] "
              f"{result.response.timings_ms['total']:.1f} ms")


def main() -> None:
    """Parse the command line and run one call (or one stream); a failed call exits with its status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="an image; with --stream a video or several images")
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--box", action="append", default=[], help="x1,y1,x2,y2 (repeatable); default: detect")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--smooth", action="store_true", help="One Euro smoothing of the stream's keypoints")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of an image list")
    args = parser.parse_args()
    try:
        with grpc.insecure_channel(args.target) as channel:
            stub = pose_pb2_grpc.PoseServiceStub(channel)
            if args.stream:
                stream(stub, args.paths, args.fps, args.smooth)
                return
            boxes = [pose_pb2.Box(**dict(zip(("x1", "y1", "x2", "y2"), map(float, box.split(",")))))
                     for box in args.box]
            print_persons(stub.Estimate(pose_pb2.EstimateRequest(image=args.paths[0].read_bytes(), boxes=boxes)))
    except grpc.RpcError as error:
        sys.exit(describe(call_status(error)))


if __name__ == "__main__":
    main()
