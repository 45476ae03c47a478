"""CPU inference speed of EfficientPose A/B/C and the MobileNetV2 baseline: ONNX Runtime vs torch eager.

    python benchmarks/model_speed.py [--archs A B C mbv2] [--batches 1 8 32] [--threads N] [--seconds S]
                                     [--out benchmarks/results/model_speed.json]

    python benchmarks/model_speed.py --int8 --pose-int8 POSE.int8.onnx [--detector-int8 DET.int8.onnx]
                                     [--pose-model POSE.onnx] [--detector-model DET.onnx] [--batches 1 8]
                                     [--out benchmarks/results/model_speed_int8.json]

``--int8`` times fp32 against int8 (``effpose quantize``) instead: the pose model per crop at every batch size
and the person detector per image (session call only, letterboxing and NMS excluded), fp32 and int8 interleaved in
rounds as below, and then runs each model under ONNX Runtime's profiler to give every op type's kernel time per
call and share (convolutions split into depthwise, pointwise, dense and transposed), so the slow kernels are named.
The fp32 models default to the shipped ones; their input sizes are read from the models. Without ``--pose-int8`` /
``--detector-int8`` the int8 models are made first, calibrated on the shared COCO train split (not timed).

For every architecture and batch size three engines run the same random NCHW float32 batch of 256x192 crops:
ONNX Runtime ("ort", CPUExecutionProvider, all graph optimisations), torch eager in NCHW ("torch") and torch eager
in channels_last ("torch-cl", the NCHW batch is converted inside the timed call, as a server would have to).
The engines are timed in interleaved rounds (one call each, rotating the order every round), so that load from
other processes on a shared machine hits them alike; the ORT/torch speedup is the median of the per-round ratios.
Every timed call starts after a short idle pause: ORT's and torch's thread pools keep spinning for a while after
a call, and without the pause one engine's spinning threads would slow down the next engine.
Achieved GFLOP/s (2 * MACs per crop * batch / time) are compared with a dense float32 matmul rate measured in the
same run, before and after the models (numpy and torch; the best of them all is the "peak"). Every case also
records the share of the machine's CPU time that other processes (or the hypervisor) took meanwhile: torch's
thread pool suffers far more than ORT's when a CPU is taken away, so ratios from loaded cases are not comparable.
Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from cpuinfo import get_cpu_info

from effpose.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from effpose.model import build_model, measure_complexity

INPUT_SIZE = (192, 256)  # (width, height)
ARCHS = ("A", "B", "C", "mbv2")
BATCHES = (1, 8, 32)
ENGINES = ("ort", "torch", "torch-cl")
TORCH_ENGINES = ("torch", "torch-cl")
MATMUL_SIZES = (1024, 2048)
MIN_REPS = 3
# Idle seconds before every timed call. After a run ORT's intra-op workers spin for about 40 ms and torch's OpenMP
# threads for about 10 ms (measured on a 2-CPU EPYC); interleaved back to back, they took 2x off the next engine.
SETTLE_SECONDS = 0.05
WARMUP_CALLS = 2
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_speed.json"
DEFAULT_INT8_OUT = DEFAULT_OUT.with_name("model_speed_int8.json")
INT8_BATCHES = (1, 8)
PROFILED_CALLS = 5
TOP_OPS = 8

Engine = Callable[[np.ndarray], object]


@dataclass(frozen=True)
class Measurement:
    """Timed calls of one engine on one (arch, batch) case; ``macs`` is per crop."""

    arch: str
    params: int
    macs: int
    batch: int
    engine: str
    times_ms: list[float]
    others_cpu: float  # share of the machine's CPU capacity that other processes used during the case

    @property
    def ms(self) -> float:
        """Median milliseconds per batch."""
        return statistics.median(self.times_ms)

    @property
    def crops_per_s(self) -> float:
        return self.batch * 1000.0 / self.ms

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s, counting a multiply-accumulate as two operations."""
        return 2.0 * self.macs * self.crops_per_s / 1e9


@dataclass(frozen=True)
class Speedup:
    """How many times faster ORT is than a torch engine on one case (> 1: ORT is faster)."""

    arch: str
    batch: int
    baseline: str
    paired_median: float  # median over rounds of torch_time / ort_time (the figure we report)
    ratio_of_medians: float
    others_cpu: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), help="architectures: A, B, C, mbv2 or a genotype JSON (e.g. a search result)")
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES), help="batch sizes")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="intra-op threads for every engine (default: the CPUs this process may use)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help=f"timed seconds per case, roughly (at least {MIN_REPS} repetitions)")
    parser.add_argument("--out", type=Path, help="JSON file for all measurements (default "
                        f"{DEFAULT_OUT.name}, with --int8 {DEFAULT_INT8_OUT.name}, in benchmarks/results)")
    int8 = parser.add_argument_group("fp32 vs int8 (--int8)")
    int8.add_argument("--int8", action="store_true", help="time fp32 against int8 models instead of the archs")
    int8.add_argument("--pose-model", type=Path, help="fp32 pose ONNX (default: the shipped model)")
    int8.add_argument("--pose-int8", type=Path, help="its int8 version (default: quantize it first)")
    int8.add_argument("--detector-model", type=Path, help="fp32 person detector (default: the shipped one)")
    int8.add_argument("--detector-int8", type=Path, help="its int8 version (default: quantize it first)")
    int8.add_argument("--calibration-method", default="percentile", help="when quantizing here: effpose quantize "
                      "--method")
    args = parser.parse_args(argv)
    if args.int8 and args.batches == list(BATCHES):
        args.batches = list(INT8_BATCHES)
    if args.out is None:
        args.out = DEFAULT_INT8_OUT if args.int8 else DEFAULT_OUT
    return args


# --- timing ---------------------------------------------------------------------------------------------------------

def time_call(fn: Callable[[], object]) -> float:
    """Seconds taken by one call of ``fn``, made after SETTLE_SECONDS of idling."""
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def warm_up(fn: Callable[[], object]) -> float:
    """Call ``fn`` WARMUP_CALLS times; return the last call's seconds as the estimate of one call."""
    for _ in range(WARMUP_CALLS - 1):
        fn()
    return time_call(fn)


def interleaved_times(runners: dict[str, Callable[[], object]], seconds: float) -> dict[str, list[float]]:
    """Time the runners in rounds of one call each (rotating who goes first), about ``seconds`` per runner.

    The settle pauses count towards ``seconds``. Returns the seconds of every timed call per runner; there are at
    least MIN_REPS rounds.
    """
    estimates = [warm_up(fn) + SETTLE_SECONDS for fn in runners.values()]
    rounds = max(MIN_REPS, math.ceil(seconds * len(runners) / sum(estimates)))
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            times[name].append(time_call(runners[name]))
    return times


# --- dense matmul peak ----------------------------------------------------------------------------------------------

def matmul_gflops(matmul: Callable[[], object], n: int, seconds: float) -> float:
    """GFLOP/s of an n x n by n x n matmul (median call time)."""
    per_call = statistics.median(interleaved_times({"matmul": matmul}, seconds)["matmul"])
    return 2.0 * n**3 / per_call / 1e9


def torch_matmul_rates(sizes: tuple[int, ...], seconds: float) -> dict[int, float]:
    """float32 torch.mm GFLOP/s per size, with torch's current thread count."""
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for n in sizes:
        a, b = (torch.randn(n, n, generator=generator) for _ in range(2))
        rates[n] = matmul_gflops(partial(torch.mm, a, b, out=torch.empty(n, n)), n, seconds)
    return rates


def numpy_matmul_rates(sizes: tuple[int, ...], seconds: float) -> dict[int, float]:
    """float32 numpy matmul GFLOP/s per size, with the BLAS thread count numpy was imported with."""
    rng = np.random.default_rng(0)
    rates = {}
    for n in sizes:
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        rates[n] = matmul_gflops(partial(np.matmul, a, b, out=np.empty((n, n), np.float32)), n, seconds)
    return rates


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def numpy_matmul_rates_with_threads(sizes: tuple[int, ...], seconds: float, threads: int) -> dict[int, float]:
    """:func:`numpy_matmul_rates` with ``threads`` BLAS threads.

    numpy's BLAS reads its thread count from the environment when it loads, so this runs in a fresh process.
    """
    with environment({name: str(threads) for name in BLAS_THREAD_VARS}):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(numpy_matmul_rates, sizes, seconds).result()


def matmul_rates(threads: int, seconds: float) -> dict[str, dict[str, float]]:
    """Dense float32 matmul GFLOP/s of numpy and torch, per library and matrix size."""
    rates = {
        "numpy": numpy_matmul_rates_with_threads(MATMUL_SIZES, seconds, threads),
        "torch": torch_matmul_rates(MATMUL_SIZES, seconds),
    }
    return {lib: {str(n): rate for n, rate in per_size.items()} for lib, per_size in rates.items()}


def matmul_peak(runs: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The best rate of several :func:`matmul_rates` runs (keyed by when they ran), with all of them."""
    rate, source = max((rate, f"{lib} n={n}, {when}") for when, rates in runs.items()
                       for lib, per_size in rates.items() for n, rate in per_size.items())
    return {"best": rate, "best_source": source, "runs": runs}


def format_rates(rates: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{lib} n={n} {rate:.1f}" for lib, per_size in rates.items() for n, rate in per_size.items())


# --- load from other processes --------------------------------------------------------------------------------------

def cpu_counters() -> tuple[float, float, float]:
    """(wall clock s, CPU s used on the whole machine incl. hypervisor steal, CPU s used by this process)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = sum(os.times()[:2])
    return time.perf_counter(), machine, own


def others_cpu_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of the machine's CPU capacity between two :func:`cpu_counters` readings that others used."""
    wall, machine, own = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, (machine - own) / (wall * (os.cpu_count() or 1)))


# --- engines --------------------------------------------------------------------------------------------------------

def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """CPU session with all graph optimisations and ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def build_engines(model: torch.nn.Module, onnx_path: Path, threads: int) -> dict[str, Engine]:
    """The three engines, each taking an NCHW float32 numpy batch."""
    session = ort_session(onnx_path, threads)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return {
        "ort": lambda crops: session.run([OUTPUT_NAME], {INPUT_NAME: crops}),
        "torch": lambda crops: model(torch.from_numpy(crops)),
        "torch-cl": lambda crops: model_cl(torch.from_numpy(crops).contiguous(memory_format=torch.channels_last)),
    }


def random_crops(batch: int) -> np.ndarray:
    width, height = INPUT_SIZE
    return np.random.default_rng(batch).standard_normal((batch, 3, height, width), dtype=np.float32)


@torch.inference_mode()
def benchmark_arch(arch: str, batches: list[int], threads: int, seconds: float, workdir: Path) -> list[Measurement]:
    """Export ``arch`` (random weights) and time every engine at every batch size."""
    torch.manual_seed(0)
    model = build_model(arch).eval()
    complexity = measure_complexity(model, INPUT_SIZE)
    onnx_path = export_onnx(model, workdir / f"{Path(arch).name}.onnx", input_size=INPUT_SIZE, weights="random-init")
    engines = build_engines(model, onnx_path, threads)
    measurements = []
    for batch in batches:
        crops = random_crops(batch)
        before = cpu_counters()
        times = interleaved_times({name: partial(engine, crops) for name, engine in engines.items()}, seconds)
        others = others_cpu_share(before, cpu_counters())
        for engine in ENGINES:
            measurements.append(Measurement(arch, complexity.params, complexity.macs, batch, engine,
                                            [1000.0 * t for t in times[engine]], others))
        summary = ", ".join(f"{m.engine} {m.ms:.1f} ms" for m in measurements[-len(ENGINES):])
        print(f"[{arch} batch {batch}] {len(times['ort'])} rounds, others' CPU {100 * others:.0f}%: {summary}",
              file=sys.stderr, flush=True)
    return measurements


def speedups(measurements: list[Measurement]) -> list[Speedup]:
    """ORT vs each torch engine for every (arch, batch) case."""
    by_case = {(m.arch, m.batch, m.engine): m for m in measurements}
    result = []
    for m in measurements:
        if m.engine != "ort":
            continue
        for baseline in TORCH_ENGINES:
            torch_m = by_case[(m.arch, m.batch, baseline)]
            paired = statistics.median(t / o for t, o in zip(torch_m.times_ms, m.times_ms, strict=True))
            result.append(Speedup(m.arch, m.batch, baseline, paired, torch_m.ms / m.ms, m.others_cpu))
    return result


# --- reporting ------------------------------------------------------------------------------------------------------

def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def speed_table(measurements: list[Measurement], peak: float) -> str:
    headers = ["arch", "params M", "GMACs/crop", "batch", "engine", "ms/batch", "crops/s", "GFLOP/s",
               "% of matmul peak"]
    rows = [[m.arch, f"{m.params / 1e6:.2f}", f"{m.macs / 1e9:.3f}", str(m.batch), m.engine, f"{m.ms:.2f}",
             f"{m.crops_per_s:.1f}", f"{m.gflops:.1f}", f"{100 * m.gflops / peak:.1f}"] for m in measurements]
    return markdown_table(headers, rows)


def speedup_table(items: list[Speedup]) -> str:
    by_case: dict[tuple[str, int, float], dict[str, float]] = {}
    for item in items:
        by_case.setdefault((item.arch, item.batch, item.others_cpu), {})[item.baseline] = item.paired_median
    headers = ["arch", "batch"] + [f"ORT vs {baseline}" for baseline in TORCH_ENGINES] + ["others' CPU %"]
    rows = [[arch, str(batch)] + [f"{ratios[b]:.2f}x" for b in TORCH_ENGINES] + [f"{100 * others:.0f}"]
            for (arch, batch, others), ratios in by_case.items()]
    return markdown_table(headers, rows)


def measurement_record(m: Measurement, peak: float) -> dict[str, Any]:
    return {
        "arch": m.arch, "params": m.params, "macs_per_crop": m.macs, "batch": m.batch, "engine": m.engine,
        "reps": len(m.times_ms), "median_ms": m.ms, "min_ms": min(m.times_ms), "crops_per_s": m.crops_per_s,
        "gflops": m.gflops, "peak_fraction": m.gflops / peak, "others_cpu": m.others_cpu, "times_ms": m.times_ms,
    }


def report(args: argparse.Namespace, peak: dict[str, Any], measurements: list[Measurement],
           ratios: list[Speedup]) -> dict[str, Any]:
    """Everything the run measured, with the machine and library versions."""
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": get_cpu_info()["brand_raw"],
        "threads": args.threads,
        "cpus_available": len(os.sched_getaffinity(0)),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__},
        "input_size": list(INPUT_SIZE),
        "seconds_per_case": args.seconds,
        "matmul_peak": peak,
        "measurements": [measurement_record(m, peak["best"]) for m in measurements],
        "speedups": [vars(item) for item in ratios],
    }


# --- fp32 vs int8 (--int8) -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionCase:
    """Timed calls of the fp32 and int8 versions of one model at one batch size (ms per call)."""

    model: str
    batch: int
    fp32_ms: list[float]
    int8_ms: list[float]
    others_cpu: float

    @property
    def speedup(self) -> float:
        """Median over rounds of fp32 time / int8 time (> 1: int8 faster)."""
        return statistics.median(f / q for f, q in zip(self.fp32_ms, self.int8_ms, strict=True))

    def record(self) -> dict[str, Any]:
        fp32, int8 = statistics.median(self.fp32_ms), statistics.median(self.int8_ms)
        return {"model": self.model, "batch": self.batch, "fp32_ms": fp32, "int8_ms": int8,
                "fp32_ms_per_item": fp32 / self.batch, "int8_ms_per_item": int8 / self.batch,
                "speedup": self.speedup, "others_cpu": self.others_cpu, "reps": len(self.fp32_ms),
                "fp32_times_ms": self.fp32_ms, "int8_times_ms": self.int8_ms}


def model_input(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """A random batch for a session's (fixed C, H, W) input, in [0, 1) (detector-like; speed ignores values)."""
    first = session.get_inputs()[0]
    _, channels, height, width = first.shape
    data = np.random.default_rng(batch).random((batch, channels, height, width), dtype=np.float32)
    return {first.name: data}


def conv_kinds(path: Path) -> dict[str, str]:
    """{name: "depthwise", "pointwise" (1x1), "dense" (k x k) or "transposed"} of a model's convolutions.

    Names are the node's, its output's and, for Conv -> Relu, the Relu output's: ORT names its fused kernels after
    one of these (QLinearConv after the node, the fp32 NCHWc Conv after the output it writes).
    """
    import onnx

    kinds = {}
    for node in onnx.load(str(path)).graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kind = None
        if node.op_type == "ConvTranspose":
            kind = "transposed"
        elif node.op_type == "Conv":
            kernel = list(attributes.get("kernel_shape", []))
            kind = "depthwise" if attributes.get("group", 1) > 1 else "pointwise" if kernel == [1, 1] else "dense"
        elif node.op_type == "Relu" and node.input[0] in kinds:
            kind = kinds[node.input[0]]
        if kind is not None:
            kinds.update({node.name: kind, node.output[0]: kind})
    return kinds


def kernel_label(event: dict[str, Any], kinds: dict[str, str]) -> str:
    """A profiler event's op type, with the convolution kind for convolutions ("QLinearConv depthwise")."""
    node = re.sub(r"(_token_\d+|_nchwc)?_kernel_time$", "", event["name"])
    kind = kinds.get(node)
    return f"{event['args']['op_name']} {kind}" if kind and "Conv" in event["args"]["op_name"] else \
        event["args"]["op_name"]


def op_type_times(path: Path, threads: int, batch: int, calls: int = PROFILED_CALLS) -> dict[str, float]:
    """Kernel milliseconds per call of every op type (after ORT's graph optimisations and QDQ fusion;
    convolutions split by kind: depthwise, pointwise, dense, transposed), from the profiler over ``calls`` calls
    at ``batch`` (the profiler slows calls a little); largest first."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    kinds = conv_kinds(path)
    with tempfile.TemporaryDirectory(prefix="effpose-profile-") as workdir:
        options.profile_file_prefix = str(Path(workdir) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = model_input(session, batch)
        for _ in range(calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            label = kernel_label(event, kinds)
            totals[label] = totals.get(label, 0.0) + event["dur"] / 1000.0 / calls
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def time_precisions(name: str, fp32: Path, int8: Path, batches: list[int], threads: int,
                    seconds: float) -> list[PrecisionCase]:
    """Interleaved timing of the fp32 and int8 sessions of one model at every batch size."""
    sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(int8, threads)}
    cases = []
    for batch in batches:
        feed = model_input(sessions["fp32"], batch)
        before = cpu_counters()
        times = interleaved_times({precision: partial(session.run, None, feed)
                                   for precision, session in sessions.items()}, seconds)
        case = PrecisionCase(name, batch, *([1000.0 * t for t in times[p]] for p in ("fp32", "int8")),
                             others_cpu_share(before, cpu_counters()))
        print(f"[{name} batch {batch}] {len(case.fp32_ms)} rounds, others' "
              f"CPU {100 * case.others_cpu:.0f}%: fp32 {statistics.median(case.fp32_ms):.1f} ms, int8 "
              f"{statistics.median(case.int8_ms):.1f} ms", file=sys.stderr, flush=True)
        cases.append(case)
    return cases


def default_int8(fp32: Path, out: Path, method: str) -> Path:
    """Quantize ``fp32`` to ``out``, calibrated on the shared COCO train split (``effpose quantize`` defaults)."""
    from effpose.data.sources import data_root
    from effpose.quantize import quantize_model

    coco = data_root() / "coco"
    quantize_model(fp32, out, coco / "annotations" / "person_keypoints_train.json", coco / "images", method=method)
    return out


def int8_models(args: argparse.Namespace, workdir: Path) -> dict[str, tuple[Path, Path, list[int]]]:
    """{name: (fp32 path, int8 path, batch sizes)} for the pose model and, when there is one, the detector."""
    from effpose.assets import default_person_detector, default_pose_model

    pose = args.pose_model or default_pose_model()
    models = {"pose": (pose, args.pose_int8 or default_int8(pose, workdir / "pose.int8.onnx",
                                                            args.calibration_method), args.batches)}
    detector = args.detector_model or default_person_detector()
    if detector is not None:
        int8 = args.detector_int8 or default_int8(detector, workdir / "detector.int8.onnx", args.calibration_method)
        models["detector"] = (detector, int8, [1])
    return models


def precision_table(cases: list[PrecisionCase]) -> str:
    headers = ["model", "batch", "fp32 ms/item", "int8 ms/item", "int8 speedup", "others' CPU %"]
    rows = [[c.model, str(c.batch), f"{statistics.median(c.fp32_ms) / c.batch:.2f}",
             f"{statistics.median(c.int8_ms) / c.batch:.2f}", f"{c.speedup:.2f}x", f"{100 * c.others_cpu:.0f}"]
            for c in cases]
    return markdown_table(headers, rows)


def op_times_table(times: dict[str, dict[str, float]]) -> str:
    """One row per profiled model: its slowest op types with ms per call and share of the kernel time."""
    headers = ["model / precision", "kernel ms"] + [f"op {i + 1}" for i in range(TOP_OPS)]
    rows = []
    for key, ops in times.items():
        whole = sum(ops.values()) or 1.0
        cells = [f"{op} {ms:.1f} ms ({100 * ms / whole:.0f}%)" for op, ms in list(ops.items())[:TOP_OPS]]
        rows.append([key, f"{whole:.1f}"] + cells + [""] * (TOP_OPS - len(cells)))
    return markdown_table(headers, rows)


def int8_main(args: argparse.Namespace) -> None:
    """Time fp32 vs int8 (pose per crop, detector per image), profile op types, print tables, write JSON."""
    print(f"{get_cpu_info()['brand_raw']}, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="effpose-int8-") as workdir:
        models = int8_models(args, Path(workdir))
        cases = [case for name, (fp32, int8, batches) in models.items()
                 for case in time_precisions(name, fp32, int8, batches, args.threads, args.seconds)]
        op_times = {f"{name} {precision} batch {batches[-1]}": op_type_times(path, args.threads, batches[-1])
                  for name, (fp32, int8, batches) in models.items()
                  for precision, path in (("fp32", fp32), ("int8", int8))}
        files = {name: {"fp32": str(fp32), "int8": str(int8), "int8_metadata": precision_metadata(int8)}
                 for name, (fp32, int8, _) in models.items()}
    print("\n" + precision_table(cases))
    print("\nKernel time per call of each op type (ONNX Runtime profiler)\n")
    print(op_times_table(op_times))
    result = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": get_cpu_info()["brand_raw"],
        "threads": args.threads, "cpus_available": len(os.sched_getaffinity(0)),
        "versions": {"python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__},
        "seconds_per_case": args.seconds, "models": files,
        "cases": [case.record() for case in cases], "op_type_ms_per_call": op_times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def precision_metadata(path: Path) -> dict[str, str]:
    """The effpose.* entries of a model's ONNX metadata that say what it is and how it was quantized."""
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    keys = ("effpose.name", "effpose.weights", "effpose.input_size", "effpose.precision", "effpose.quantization")
    return {key: meta[key] for key in keys if key in meta}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.int8:
        int8_main(args)
        return
    torch.set_num_threads(args.threads)
    print(f"{get_cpu_info()['brand_raw']}, {args.threads} threads", flush=True)
    rates_before = matmul_rates(args.threads, args.seconds)
    print(f"float32 matmul GFLOP/s before the models: {format_rates(rates_before)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="effpose-speed-") as workdir:
        measurements = [m for arch in args.archs
                        for m in benchmark_arch(arch, args.batches, args.threads, args.seconds, Path(workdir))]
    rates_after = matmul_rates(args.threads, args.seconds)
    print(f"float32 matmul GFLOP/s after the models: {format_rates(rates_after)}")
    peak = matmul_peak({"before": rates_before, "after": rates_after})
    print(f"matmul peak: {peak['best']:.1f} GFLOP/s ({peak['best_source']})\n")
    ratios = speedups(measurements)
    print(speed_table(measurements, peak["best"]))
    print("\nORT speedup (median of per-round torch/ORT time ratios; > 1: ORT faster)\n")
    print(speedup_table(ratios))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report(args, peak, measurements, ratios), indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
