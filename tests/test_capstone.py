"""Chapter 06's machinery: the Pareto front, the study's bookkeeping (keys, reuse, resume),
the leaderboard summary, costs and the architecture trace."""
import json
import random

import pytest
import torch

from hrvit_edu import capstone as CP
from hrvit_edu.bench import count_flops
from hrvit_edu.profiles import get_profile
from hrvit_edu.train.evaluate import scale_metric


def _dominated(i, cost, quality):
    return any(cost[j] <= cost[i] and quality[j] >= quality[i] and (cost[j] < cost[i] or quality[j] > quality[i])
               for j in range(len(cost)))


def test_pareto_front_examples():
    assert CP.pareto_front([3, 1, 4, 2, 5], [0.7, 0.6, 0.65, 0.8, 0.85]) == [1, 3, 4]
    assert CP.pareto_front([1, 1, 2], [0.5, 0.7, 0.7]) == [1]            # equal cost, lower quality: dominated
    assert CP.pareto_front([2, 2, 1], [0.5, 0.5, 0.1]) == [2, 0, 1]      # identical points both kept
    assert CP.pareto_front([], []) == []
    with pytest.raises(ValueError, match="costs but"):
        CP.pareto_front([1, 2], [0.5])


def test_pareto_front_invariants_on_random_sets():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 15)
        cost = [rng.randint(1, 6) for _ in range(n)]
        quality = [rng.randint(0, 5) for _ in range(n)]
        front = CP.pareto_front(cost, quality)
        assert all(not _dominated(i, cost, quality) for i in front)
        assert all(_dominated(i, cost, quality) for i in range(n) if i not in front)
        assert [cost[i] for i in front] == sorted(cost[i] for i in front)
        # along the front, quality rises strictly with cost (no point is a free lunch over another)
        assert all(quality[a] < quality[b] for a, b in zip(front, front[1:]) if cost[a] < cost[b])


def _fake_study():
    runs = []
    for name, (model, chapter) in CP.CONTENDERS.items():
        for seed in (0, 1, 2):
            runs.append({"row": name, "model": model, "chapter": chapter, "seed": seed, "key": f"{name}-{seed}",
                         "source": "test", "test_miou": 0.5 + 0.01 * seed, "boundary_acc": 0.7, "train_seconds": 10.0,
                         **{scale_metric(f): 0.5 / f for f in CP.TEST_SCALES}})
    runs.append({"row": CP.EXPEDITED, "model": "vit_seg_textbook", "chapter": "05_expedite", "seed": 0,
                 "key": "ViT-0", "source": "test", "test_miou": 0.4, "train_seconds": 0.0, "t": 0.2})
    return {"runs": runs}


def test_leaderboard_summarises_every_row_in_order():
    board = CP.leaderboard(_fake_study())
    assert [r.name for r in board] == [*CP.CONTENDERS, CP.EXPEDITED]
    hr = board[1]
    assert hr.miou[0] == pytest.approx(0.51) and hr.miou[1] == pytest.approx(0.01) and hr.miou[2] == 3
    assert hr.per_seed == pytest.approx((0.5, 0.51, 0.52))
    assert hr.scales[2.0][0] == pytest.approx(0.25)
    exp = board[-1]
    assert exp.boundary_acc is None and exp.scales == {} and exp.miou[2] == 1


def test_check_keys_refuses_missing_and_stale_runs():
    study = _fake_study()
    keys = {(r["row"], r["seed"]): r["key"] for r in study["runs"] if r["row"] in CP.CONTENDERS}
    CP.check_keys(study, keys)
    with pytest.raises(ValueError, match="stale"):
        CP.check_keys(study, {**keys, ("HRViT", 0): "another"})
    with pytest.raises(ValueError, match="missing"):
        CP.check_keys(study, {**keys, ("HRViT", 7): "x"})


def test_stored_study_matches_the_current_code():
    """The committed study: every (row, seed) under the key the code gives it today, all metrics present,
    and the ViT's expedited arm for every seed."""
    from hrvit_edu.data import digitscenes_bundle
    from hrvit_edu.grading.assign import find_root

    profile = get_profile("book")
    study = json.loads(CP.results_path(find_root(), "book").read_text())
    CP.check_keys(study, CP.expected_keys(digitscenes_bundle(profile.scenes), CP.capstone_budget(profile.budget)))
    for r in study["runs"]:
        if r["row"] in CP.CONTENDERS:
            assert all(m in r for m in CP.METRICS), r["row"]
    assert sorted(r["seed"] for r in study["runs"] if r["row"] == CP.EXPEDITED) == list(CP.SEEDS)
    assert study["budget"]["steps"] == profile.budget.steps and study["budget"]["eval_every"] == 0


def test_reusable_needs_the_same_key_and_every_metric(tmp_path):
    rec = {"arm": "reference", "seed": 0, "key": "abc", "train_seconds": 1.0,
           **{m: 0.5 for m in CP.METRICS}}
    path = tmp_path / "02_transnext_ablations_book.json"
    path.write_text(json.dumps({"runs": [rec]}))
    got = CP.reusable(tmp_path, "book", "TransNeXt", "abc")
    assert got is not None and got[1] == path.name and got[0]["test_miou"] == 0.5
    assert CP.reusable(tmp_path, "book", "TransNeXt", "other") is None
    assert CP.reusable(tmp_path, "book", "RTFormer", "abc") is None            # no sweep file for that chapter
    del rec[scale_metric(2.0)]
    path.write_text(json.dumps({"runs": [rec]}))
    assert CP.reusable(tmp_path, "book", "TransNeXt", "abc") is None           # a metric is missing: retrain


@pytest.mark.slow
def test_run_study_trains_records_and_resumes(tmp_path, monkeypatch):
    """Two rows, one seed, the ci profile: the records, the expedited ViT, the counted claims, and a
    second call that trains nothing."""
    monkeypatch.setattr(CP, "CONTENDERS", {k: CP.CONTENDERS[k] for k in ("ConvNet (Preface)", "ViT")})
    path = tmp_path / "06_capstone_ci.json"
    calls = []
    out = CP.run_study(path, get_profile("ci"), seeds=(0,), log=calls.append)
    rows = {r["row"]: r for r in out["runs"]}
    assert set(rows) == {"ConvNet (Preface)", "ViT", CP.EXPEDITED}
    assert all(m in rows["ViT"] for m in CP.METRICS) and 0 <= rows["ViT"]["test_miou"] <= 1
    assert rows[CP.EXPEDITED]["key"] == rows["ViT"]["key"] and rows[CP.EXPEDITED]["block_macs_ratio"] < 1
    assert json.loads(path.read_text())["runs"] == out["runs"] and out["counted"]
    calls.clear()
    again = CP.run_study(path, get_profile("ci"), seeds=(0,), log=calls.append)
    assert calls == [] and again["runs"] == out["runs"]


def test_measure_costs_counts_what_the_counter_counts():
    (rec,) = CP.measure_costs(0.2, sizes=(32,), rows=["ConvNet (Preface)"], min_run_time=0.01)
    model = CP.contender("ConvNet (Preface)", 0).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert rec["flops"]["32"] == count_flops(lambda: model(x))
    lat = rec["latency_ms"]["32"]
    assert 0 < lat["p20"] <= lat["median"] <= lat["p80"] and lat["calls"] >= 1


def test_expedited_row_costs_less_than_the_vit():
    vit, exp = CP.measure_costs(0.2, sizes=(64,), rows=["ViT", CP.EXPEDITED], min_run_time=0.01)
    assert exp["params"] == vit["params"]
    assert exp["flops"]["64"] < vit["flops"]["64"]


def test_save_costs_writes_only_inside_a_book_run(tmp_path, monkeypatch):
    monkeypatch.delenv("HRVIT_EDU_REPORT_DIR", raising=False)
    assert CP.save_costs([{"row": "x"}]) is None
    monkeypatch.setenv("HRVIT_EDU_REPORT_DIR", str(tmp_path))
    path = CP.save_costs([{"row": "x"}])
    data = json.loads(path.read_text())
    assert data["rows"] == [{"row": "x"}] and data["env"]["device"] and data["batch"] == 1


def test_hot_operators_are_registered_custom_ops():
    import importlib
    for mod in ("aggregated_attention", "des", "external_attention", "hire", "token_clustering", "window_attention"):
        importlib.import_module(f"hrvit_edu.kernels.{mod}")            # importing a kernel module registers its op
    names = {n.strip() for ops in CP.HOT_OPS.values() for n in ops.split(",") if n.strip().startswith("hrvit_edu::")}
    assert names and set(CP.HOT_OPS) == {*CP.CONTENDERS, CP.EXPEDITED}
    for name in names:
        assert hasattr(getattr(torch.ops, "hrvit_edu"), name.split("::")[1]), name


def test_resolution_trace_reads_the_architecture():
    hr = CP.resolution_trace(CP.contender("HRViT", 0))
    vit = CP.resolution_trace(CP.contender("ViT", 0))
    assert {s for _, s, _ in hr} >= {4, 8, 16}                  # parallel branches at three strides at least
    assert {s for name, s, _ in vit if name.startswith("blocks")} == {4}   # a plain ViT: one grid
    assert all(c > 0 for _, _, c in hr)
