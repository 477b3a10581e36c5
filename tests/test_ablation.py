"""The ablation runner behind chapter 01's claims table: verdict rule, stored-results checks, resume."""
import json
import math

import pytest
import torch

import hrvit_edu
from hrvit_edu.data import digitscenes_bundle
from hrvit_edu.models.hrvit import ABLATION_SEEDS, ABLATIONS, LR_SWEEP, ablation_budget, ablation_sweep
from hrvit_edu.profiles import get_profile
from hrvit_edu.train.ablation import Arm, check_results, compare, expected_keys, load_results, run_ablation, summarize

CI = get_profile("ci")
BUDGET = CI.budget.replace(steps=2, warmup_steps=1, batch_size=4, eval_every=0)


@pytest.fixture(scope="module")
def data():
    return digitscenes_bundle(CI.scenes)


def make(**kw):
    return hrvit_edu.create_model("preface_convnet", **kw)


ARMS = [Arm("reference", {}), Arm("narrow", {"widths": (8, 16, 24)})]


def test_compare_is_the_stated_rule():
    # |d| > 2 * sqrt((s_a^2 + s_r^2) / 2)
    d, s, resolved = compare((0.60, 0.02, 3), (0.50, 0.02, 3))
    assert d == pytest.approx(0.10) and s == pytest.approx(0.02) and resolved
    d, s, resolved = compare((0.53, 0.03, 3), (0.50, 0.01, 3))
    assert s == pytest.approx(math.sqrt((0.03 ** 2 + 0.01 ** 2) / 2)) and not resolved


def test_summarize_mean_and_sample_sd():
    runs = {"runs": [{"arm": "a", "m": v} for v in (1.0, 2.0, 3.0)]}
    assert summarize(runs, "m")["a"] == (pytest.approx(2.0), pytest.approx(1.0), 3)


def test_run_store_check_and_resume(data, tmp_path, monkeypatch):
    path = tmp_path / "abl.json"
    res = run_ablation(make, ARMS, [0, 1], data, BUDGET, path=path)
    assert len(res["runs"]) == 4 and {r["arm"] for r in res["runs"]} == {"reference", "narrow"}
    assert all(0.0 <= r["test_miou"] <= 1.0 and 0.0 <= r["boundary_acc"] <= 1.0 for r in res["runs"])
    keys = expected_keys(make, ARMS, [0, 1], data, BUDGET)
    check_results(load_results(path), keys)                       # what was stored is what the code gives

    # a second call trains nothing: every run is found under its key
    import hrvit_edu.train.ablation as ab
    monkeypatch.setattr(ab, "fit", lambda *a, **k: pytest.fail("a stored run was retrained"))
    again = run_ablation(make, ARMS, [0, 1], data, BUDGET, path=path)
    assert sorted(r["key"] for r in again["runs"]) == sorted(r["key"] for r in res["runs"])


def test_stale_or_missing_results_are_refused(data, tmp_path):
    keys = expected_keys(make, ARMS, [0], data, BUDGET)
    good = {"runs": [{"arm": a, "seed": s, "key": k} for (a, s), k in keys.items()]}
    check_results(good, keys)
    stale = json.loads(json.dumps(good))
    stale["runs"][0]["key"] = "0" * 16
    with pytest.raises(ValueError, match="stale"):
        check_results(stale, keys)
    with pytest.raises(ValueError, match="missing"):
        check_results({"runs": good["runs"][1:]}, keys)
    # another budget gives other keys
    other = expected_keys(make, ARMS, [0], data, BUDGET.replace(steps=3))
    with pytest.raises(ValueError, match="stale"):
        check_results(good, other)


def test_chapter_arms_are_single_changes():
    assert ABLATIONS["reference"] == {}
    assert all(len(kw) == 1 for name, kw in ABLATIONS.items() if name != "reference")
    b = ablation_budget(get_profile("book").budget)
    assert b.steps == get_profile("book").budget.steps // 2 and b.eval_every == 0
    for kw in ABLATIONS.values():                                  # every arm builds and runs
        torch.manual_seed(0)
        m = hrvit_edu.create_model("hrvit_textbook", **kw).eval()
        with torch.no_grad():
            assert m(torch.zeros(1, 1, 64, 64)).shape == (1, 11, 64, 64)


def test_ablation_sweep_covers_every_arm_and_the_lr_sweep():
    (arms, seeds), (lr_arms, lr_seeds) = ablation_sweep()
    assert [a.name for a in arms] == list(ABLATIONS) and seeds == list(ABLATION_SEEDS)
    assert [a.budget["lr"] for a in lr_arms] == list(LR_SWEEP) and lr_seeds == [0]
    assert all(a.overrides == {} for a in lr_arms)



def test_extra_metrics_are_recorded_and_summarised(data, tmp_path):
    calls = []

    def extra(model):
        calls.append(type(model).__name__)
        return {"width_sum": float(sum(p.numel() for p in model.parameters()))}

    res = run_ablation(make, ARMS, [0], data, BUDGET, path=tmp_path / "x.json", extra=extra)
    assert len(calls) == 2 and all("width_sum" in r for r in res["runs"])
    s = summarize(res, "width_sum")
    assert s["narrow"][0] < s["reference"][0]


def test_transnext_sweep_and_budget():
    from hrvit_edu.models import transnext as T
    groups = T.ablation_sweep()
    assert [a.name for a in groups[0][0]] == list(T.ABLATIONS) and groups[0][1] == [0, 1, 2]
    b = T.ablation_budget(get_profile("book").budget)
    assert b.steps == get_profile("book").budget.steps and b.eval_every == 0


def test_reference_arms_read_every_stored_chapter_sweep(tmp_path):
    from pathlib import Path

    from hrvit_edu.train.ablation import TEXTBOOK_REFERENCES, reference_arms

    results = Path(__file__).resolve().parents[1] / "chapters" / "results"
    rows = reference_arms(results, "book")
    stored = [c for c in TEXTBOOK_REFERENCES if (results / f"{c}_ablations_book.json").exists()]
    assert [r.chapter for r in rows] == stored and len(stored) == 4
    for r in rows:
        res = load_results(results / f"{r.chapter}_ablations_book.json")
        ref_runs = [x for x in res["runs"] if x["arm"] == "reference"]
        assert (r.mean, r.n) == summarize({"runs": ref_runs})["reference"][::2]
        assert r.n == 3 and 0 < r.mean < 1 and r.steps == res["budget"]["steps"]
        hrvit_edu.create_model(r.model)                      # every row names a registered model
    assert reference_arms(tmp_path, "book") == []            # no stored sweep: no rows
