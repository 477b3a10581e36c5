"""Benchmark harness: timing, FLOPs, memory, roofline, device-stamped records."""
from .core import (
    DEVICE_PEAKS,
    BenchRecord,
    benchmark,
    count_flops,
    count_params,
    device_name,
    env_info,
    load_records,
    peak_memory,
    plot_sweep,
    profile_ops,
    records_table,
    roofline,
    save_records,
    sweep,
    time_fn,
)

__all__ = ["DEVICE_PEAKS", "BenchRecord", "benchmark", "count_flops", "count_params", "device_name", "env_info",
           "load_records", "peak_memory", "plot_sweep", "profile_ops", "records_table", "roofline", "save_records",
           "sweep", "time_fn"]
