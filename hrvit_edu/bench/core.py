"""Benchmark harness: honest timings, FLOPs, memory and rooflines, saved as device-stamped data.

Timing rules (the book's "honest numbers"):
* warm-up first, then repeated runs; report the **median** with the 20th and 80th percentiles;
* CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (thread count fixed and recorded);
* GPU: ``triton.testing.do_bench`` (cold L2, ``quantiles=[0.5, 0.2, 0.8]``) or CUDA events;
* ratios are only ever taken between records measured in the same run on the same device.

Every :class:`BenchRecord` carries the device name, torch/triton versions, thread count,
dtype and shapes, and round-trips through JSON/CSV so notebooks render stored results.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import weakref
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Datasheet peaks (dense) for roofline fractions: (FLOP/s at the given dtype, bytes/s).
DEVICE_PEAKS = {
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12, "bw": 3.35e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12, "bw": 2.0e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12, "bw": 4.8e12},
}


def device_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def env_info(device: str | torch.device = "cpu") -> dict:
    """Where a number was measured: device, software versions, threads."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "device_type": torch.device(device).type,
            "torch": torch.__version__, "triton": triton_version,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


@dataclasses.dataclass
class BenchRecord:
    name: str                       # what was timed, e.g. "softmax/triton"
    shape: str                      # input shape(s), as text
    dtype: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int
    flops: float | None = None      # per call
    bytes: float | None = None      # compulsory traffic per call (a model, not a measurement)
    peak_mem_bytes: float | None = None
    params: int | None = None
    items: int | None = None        # images (or tokens) processed per call, for throughput
    extra: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)

    @property
    def tflops(self) -> float | None:
        return None if self.flops is None else self.flops / (self.median_ms * 1e-3) / 1e12

    @property
    def throughput(self) -> float | None:
        """Items per second at the median latency."""
        return None if self.items is None else self.items / (self.median_ms * 1e-3)

    @property
    def gbps(self) -> float | None:
        return None if self.bytes is None else self.bytes / (self.median_ms * 1e-3) / 1e9


def time_fn(fn: Callable[[], object], device: str | torch.device = "cpu",
            min_run_time: float = 0.5, warmup: int = 3) -> tuple[float, float, float, int]:
    """(median, p20, p80) in milliseconds and the number of timed calls."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            import triton.testing
            # warmup/rep are *milliseconds* of running: ask for every timing to count them
            times = sorted(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="all"))
            q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
            return statistics.median(times), q[0], q[3], len(times)
        except ImportError:
            return _time_cuda_events(fn, warmup)
    import torch.utils.benchmark as tb

    for _ in range(warmup):
        fn()
    m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
                 ).blocked_autorange(min_run_time=min_run_time)
    times = sorted(t * 1e3 for t in m.times)
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return statistics.median(times), q[0], q[3], len(times) * m.number_per_run


def _time_cuda_events(fn, warmup: int, reps: int = 50):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    q = statistics.quantiles(sorted(times), n=5)
    return statistics.median(times), q[0], q[3], reps


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen and (p.requires_grad or not trainable_only):
            seen.add(id(p))
            n += p.numel()
    return n


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as ``torch.utils.flop_counter`` counts them (matmul/conv-like ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of storages created inside the mode and still alive (CPU or GPU alike).

    ``with LiveTensorBytes() as t: ...`` then ``t.peak``; :func:`peak_memory` and the grader's
    memory rule (``Question.measure_memory``) use it."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in self._seen or st.nbytes() == 0:
                    continue
                self._seen.add(key)
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, key, st.nbytes())
        return out


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated by one call beyond what was allocated before it.

    CUDA: the caching allocator's statistics (``max_memory_allocated``), exact.
    CPU: torch has no public allocator statistics, so this counts the storages of the tensors
    that aten operators *return* during the call (forward and backward alike), alive at the same
    time: a storage is charged when an op first returns it and freed when that tensor dies.  It
    does not see scratch memory an operator allocates and frees internally (e.g. inside a fused
    SDPA kernel), nor memory outside torch; it uses the semi-private
    ``torch.utils._python_dispatch.TorchDispatchMode``, which torch's own tools (FlopCounterMode)
    are built on.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    tracker = LiveTensorBytes()
    with tracker:
        fn()
    return tracker.peak


@contextlib.contextmanager
def _silence_fd2():
    """The profiler's C++ side (Kineto) prints start/stop lines straight to file descriptor 2,
    past Python's ``sys.stderr``; a notebook would store them.  Point fd 2 at /dev/null meanwhile."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profile_ops(fn: Callable[[], object], repeats: int = 3, warmup: int = 2):
    """Profile ``repeats`` calls of ``fn`` on the CPU by aten operator.

    Returns ``(seconds per call, events)`` with ``events = torch.profiler``'s ``key_averages()``
    (``.table(sort_by="self_cpu_time_total")`` prints where the time goes).  Times include the
    profiler's own overhead: use them to rank operators, :func:`time_fn` to time.
    """
    import time

    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    with _silence_fd2():
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                fn()
        seconds = (time.perf_counter() - t0) / repeats
    return seconds, prof.key_averages()


def benchmark(name: str, fn: Callable[[], object], *, device: str | torch.device = "cpu",
              shape="", dtype="", flops: float | None = None, bytes: float | None = None,
              count: bool = True, memory: bool = True, params: int | None = None,
              items: int | None = None, min_run_time: float = 0.5, **extra) -> BenchRecord:
    """Time ``fn`` and (optionally) count its FLOPs and peak memory; return one record."""
    med, p20, p80, n = time_fn(fn, device, min_run_time)
    if flops is None and count:
        flops = count_flops(fn) or None
    mem = peak_memory(fn, device) if memory else None
    return BenchRecord(name, str(shape), str(dtype).replace("torch.", ""), med, p20, p80, n,
                       flops, bytes, mem, params, items, extra, env_info(device))


def sweep(name: str, make_fn: Callable[[object], Callable[[], object]], values: Iterable,
          key: str = "size", **kw) -> list[BenchRecord]:
    """One :func:`benchmark` per value (e.g. a resolution); ``make_fn(value)`` builds the call."""
    out = []
    for v in values:
        rec = benchmark(name, make_fn(v), **kw)
        rec.extra[key] = v
        out.append(rec)
    return out


def roofline(flops: float, bytes: float, seconds: float, peak_flops: float, peak_bw: float) -> dict:
    """Where a measured kernel sits under the roofline ``min(peak_flops, I * peak_bw)``.

    I = flops / bytes (arithmetic intensity).  ``fraction`` = achieved / attainable at that I.
    """
    intensity = flops / bytes
    attainable = min(peak_flops, intensity * peak_bw)
    achieved = flops / seconds
    return {"intensity": intensity, "ridge": peak_flops / peak_bw,
            "bound": "memory" if intensity < peak_flops / peak_bw else "compute",
            "achieved_flops": achieved, "achieved_bw": bytes / seconds,
            "attainable_flops": attainable, "fraction": achieved / attainable}


# ------------------------------------------------------------------------------ storage
def save_records(records: list[BenchRecord], path: str | Path) -> Path:
    """Write ``.json`` (full) or ``.csv`` (flat: env and extra columns prefixed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [dataclasses.asdict(r) for r in records]
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1, sort_keys=True))
    elif path.suffix == ".csv":
        flat = [{**{k: v for k, v in r.items() if k not in ("env", "extra")},
                 **{f"env.{k}": v for k, v in r["env"].items()},
                 **{f"extra.{k}": v for k, v in r["extra"].items()}} for r in rows]
        cols = sorted({k for f in flat for k in f})
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(flat)
    else:
        raise ValueError(f"save_records writes .json or .csv, not {path.suffix!r}")
    return path


def load_records(path: str | Path) -> list[BenchRecord]:
    return [BenchRecord(**r) for r in json.loads(Path(path).read_text())]


def records_table(records: list[BenchRecord], columns=("name", "shape", "dtype", "median_ms",
                                                       "p20_ms", "p80_ms")) -> str:
    """A plain-text table (numbers to 3 significant digits)."""
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    rows = [[fmt(getattr(r, c, r.extra.get(c, ""))) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(s.ljust(w) for s, w in zip(cells, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot_sweep(records: list[BenchRecord], x: str = "size", y: str = "median_ms",
               logy: bool = True, title: str | None = None):
    """One line per record name: ``y`` (a field or property) against ``extra[x]``.  Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name in dict.fromkeys(r.name for r in records):
        rs = [r for r in records if r.name == name]
        ax.plot([r.extra[x] for r in rs], [getattr(r, y) for r in rs], marker="o", label=name)
    ax.set(xlabel=x, ylabel=y, yscale="log" if logy else "linear")
    ax.legend(fontsize=8)
    ax.set_title(title or f"{records[0].env.get('device', '')}", fontsize=9)
    fig.tight_layout()
    return fig
