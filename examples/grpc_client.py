"""Example client of ``effpose.v1.PoseService`` (stubs: ``from effpose.v1 import pose_pb2, pose_pb2_grpc``).

    python examples/grpc_client.py photo.jpg [--box 40,30,260,420] [--target localhost:50051]
    python examples/grpc_client.py --stream video.mp4 [--smooth]          # a video file, through OpenCV
    python examples/grpc_client.py --stream frame_000.jpg frame_001.jpg   # a list of frames (--fps sets their times)
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc

from effpose.v1 import pose_pb2, pose_pb2_grpc


def print_persons(response: pose_pb2.EstimateResponse) -> None:
    """One line per person, then one per keypoint."""
    for person in response.persons:
        box = person.box
        print(f"person ({person.source}) score {person.score:.3f} box {box.x1:.0f},{box.y1:.0f},{box.x2:.0f},{box.y2:.0f}")
        for keypoint in person.keypoints:
            print(f"  {keypoint.name:15s} {keypoint.x:8.1f} {keypoint.y:8.1f}  {keypoint.score:.3f}")


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
            print(f"frame {result.frame_id}: error {grpc.StatusCode(result.error.code)}: {result.error.message}")
            continue
        people = ", ".join(f"#{p.track_id} {p.score:.2f}" for p in result.response.persons)
        print(f"frame {result.frame_id}: {len(result.response.persons)} person(s) [{people}] "
              f"{result.response.timings_ms['total']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="an image; with --stream a video or several images")
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--box", action="append", default=[], help="x1,y1,x2,y2 (repeatable); default: detect")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--smooth", action="store_true", help="One Euro smoothing of the stream's keypoints")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of an image list")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        stub = pose_pb2_grpc.PoseServiceStub(channel)
        if args.stream:
            stream(stub, args.paths, args.fps, args.smooth)
            return
        boxes = [pose_pb2.Box(**dict(zip(("x1", "y1", "x2", "y2"), map(float, box.split(","))))) for box in args.box]
        print_persons(stub.Estimate(pose_pb2.EstimateRequest(image=args.paths[0].read_bytes(), boxes=boxes)))


if __name__ == "__main__":
    main()
