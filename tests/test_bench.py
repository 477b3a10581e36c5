import json

import pytest
import torch

from hrvit_edu.bench import (
    BenchRecord,
    benchmark,
    count_flops,
    load_records,
    peak_memory,
    records_table,
    roofline,
    save_records,
    sweep,
    time_fn,
)


def test_time_fn_quantiles_are_ordered():
    x = torch.randn(64, 64)
    med, p20, p80, n = time_fn(lambda: x @ x, min_run_time=0.05)
    assert 0 < p20 <= med <= p80 and n >= 2


def test_count_flops_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_peak_memory_counts_live_intermediates():
    x = torch.randn(256, 256)
    one = 256 * 256 * 4
    assert peak_memory(lambda: torch.empty(1000)) == 4000
    assert peak_memory(lambda: (x @ x).relu()) == 2 * one       # both alive at the relu
    def chain():
        for _ in range(3):
            y = x * 2
            del y
    assert peak_memory(chain) == one                                # freed before the next


def test_roofline():
    r = roofline(flops=1e12, bytes=1e10, seconds=0.01, peak_flops=1e15, peak_bw=1e12)
    assert r["intensity"] == 100 and r["bound"] == "memory"
    assert r["attainable_flops"] == pytest.approx(1e14)
    assert r["fraction"] == pytest.approx(1.0)


def test_records_roundtrip_and_table(tmp_path):
    x = torch.randn(32, 32)
    recs = sweep("mm", lambda n: (lambda: x[:n, :n] @ x[:n, :n]), [8, 16], key="n",
                 shape="n x n", dtype=x.dtype, min_run_time=0.02)
    assert [r.extra["n"] for r in recs] == [8, 16]
    assert recs[1].flops == 2 * 16 ** 3 and recs[0].env["torch"] == torch.__version__
    assert recs[0].env["threads"] == torch.get_num_threads() and recs[0].env["device"]
    assert load_records(save_records(recs, tmp_path / "r.json")) == recs
    text = (save_records(recs, tmp_path / "r.csv")).read_text()
    assert "env.device" in text.splitlines()[0] and len(text.splitlines()) == 3
    table = records_table(recs, columns=("name", "n", "median_ms"))
    assert table.splitlines()[0].split() == ["name", "n", "median_ms"]
    with pytest.raises(ValueError, match="json or .csv"):
        save_records(recs, tmp_path / "r.txt")


def test_benchmark_record_fields():
    r = benchmark("add", lambda: torch.ones(10) + 1, shape=(10,), dtype=torch.float32,
                  bytes=80, min_run_time=0.02)
    assert isinstance(r, BenchRecord) and r.dtype == "float32" and r.gbps > 0
    json.dumps(r.__dict__)


def test_throughput_params_and_plot():
    import hrvit_edu
    from hrvit_edu.bench import count_params, plot_sweep
    m = hrvit_edu.create_model("preface_convnet")
    assert count_params(m) == sum(p.numel() for p in m.parameters())
    lin = torch.nn.Linear(4, 4)
    tied = torch.nn.Sequential(lin, lin)
    assert count_params(tied) == 20
    x = torch.randn(8, 1, 64, 64)
    recs = sweep("convnet", lambda b: (lambda: m(x[:b])), [1, 2], key="batch", items=None,
                 count=False, memory=False, min_run_time=0.02)
    r = benchmark("convnet", lambda: m(x), items=8, count=False, memory=False, min_run_time=0.02)
    assert r.throughput == pytest.approx(8 / (r.median_ms / 1e3))
    fig = plot_sweep(recs, x="batch")
    assert fig.axes[0].get_xlabel() == "batch"
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_gpu_timing_reports_the_real_number_of_calls(monkeypatch):
    """do_bench's warmup/rep are milliseconds: the record must count the calls it timed."""
    pytest.importorskip("triton")
    import triton.testing

    from hrvit_edu.bench import time_fn
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep, return_mode: [3.0, 1.0, 2.0, 4.0, 5.0])
    median, p20, p80, n = time_fn(lambda: None, device="cuda")
    assert n == 5 and median == 3.0 and p20 <= median <= p80


def test_profile_ops_ranks_operators_and_prints_nothing(capfd):
    from hrvit_edu.bench import profile_ops

    a = torch.randn(64, 64)
    seconds, events = profile_ops(lambda: a @ a, repeats=2, warmup=1)
    assert seconds > 0 and any(e.key == "aten::mm" for e in events)
    out, err = capfd.readouterr()
    assert "profiler" not in err and out == ""
