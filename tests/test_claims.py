"""The book's claim table: the registry agrees with the stored sweeps, and the verdict rules."""
import pytest

from hrvit_edu.claims import CLAIMS, Claim, claim_table, count_claims, evaluate_claim
from hrvit_edu.grading.assign import find_root

RESULTS = find_root() / "chapters" / "results"


def test_every_claim_is_computed_from_its_chapters_stored_results():
    table = claim_table(RESULTS)
    assert [v.claim for v in table] == list(CLAIMS)             # every chapter 01-05 has its stored file
    assert {v.claim.chapter for v in table} == {"01_hrvit", "02_transnext", "03_rtformer", "04_hiremlp", "05_expedite"}
    assert all(v.n >= 3 for v in table)
    verdicts = {v.claim.text: v.verdict for v in table}
    # a few verdicts the chapters printed (their stored outputs), as a check on the sign conventions
    assert verdicts["the HR branch helps boundaries"] == "confirmed"
    assert verdicts["DES loses no accuracy vs a dense shortcut"] == "not contradicted"
    assert verdicts["top-k reconstruction beats naive unpooling"] == "contradicted"
    assert verdicts["clustering beats average pooling"] == "confirmed"
    assert verdicts["expediting at the paper's placement loses a fraction of a point"] == "contradicted"
    assert verdicts["code's re-weighting vs the paper's sum"] == "ours better"


def _runs(arms, paired=False):
    return {"runs": [{"arm": a, "seed": s, "test_miou": v} for a, vals in arms.items() for s, v in enumerate(vals)]}


@pytest.mark.parametrize("ref, alt, kind, paper, want", [
    ([0.80, 0.81, 0.79], [0.70, 0.71, 0.69], "helps", "better", "confirmed"),
    ([0.70, 0.71, 0.69], [0.80, 0.81, 0.79], "helps", "better", "contradicted"),
    ([0.80, 0.70, 0.75], [0.74, 0.76, 0.72], "helps", "better", "not resolved at this scale"),
    ([0.70, 0.71, 0.69], [0.80, 0.81, 0.79], "no_loss", "no loss", "contradicted"),
    ([0.80, 0.81, 0.79], [0.70, 0.71, 0.69], "no_loss", "no loss", "not contradicted"),
    ([0.80, 0.81, 0.79], [0.70, 0.71, 0.69], "helps", "-", "ours better"),
    ([0.70, 0.71, 0.69], [0.80, 0.81, 0.79], "helps", "-", "ours worse"),
])
def test_verdict_rules(ref, alt, kind, paper, want):
    c = Claim("01_hrvit", "x", paper, "alt", kind=kind)
    v = evaluate_claim(c, _runs({"reference": ref, "alt": alt}), "f.json")
    assert v.verdict == want
    assert v.d == pytest.approx(sum(ref) / 3 - sum(alt) / 3)


def test_paired_rule_of_chapter_05():
    # the same offset on every seed: zero sd of the differences, resolved however small
    c = Claim("05_expedite", "x", "better", "alt", ref="ref")
    v = evaluate_claim(c, _runs({"ref": [0.50, 0.70, 0.60], "alt": [0.49, 0.69, 0.59]}), "f.json")
    assert v.d == pytest.approx(0.01) and v.s == pytest.approx(0.0, abs=1e-12) and v.verdict == "confirmed"
    # the unpaired rule would call the same numbers a tie (the seeds spread far more than the gap)
    u = evaluate_claim(Claim("01_hrvit", "x", "better", "alt", ref="ref"),
                       _runs({"ref": [0.50, 0.70, 0.60], "alt": [0.49, 0.69, 0.59]}), "f.json")
    assert u.verdict == "not resolved at this scale"


def test_a_claim_whose_arm_is_not_stored_raises():
    with pytest.raises(KeyError, match="no stored runs of arm 'missing'"):
        evaluate_claim(Claim("01_hrvit", "x", "-", "missing"), _runs({"reference": [0.1, 0.2]}), "f.json")


def test_published_parameter_counts_are_reproduced_within_one_percent():
    rows = count_claims()
    assert {r["chapter"] for r in rows} == {"01_hrvit", "02_transnext", "03_rtformer", "04_hiremlp"}
    bad = [(r["model"], f"{r['rel_error']:+.2%}") for r in rows if abs(r["rel_error"]) > 0.01]
    assert not bad, bad
