import math

import pytest
import torch

import hrvit_edu
from hrvit_edu.data import SceneConfig, digitscenes_bundle
from hrvit_edu.profiles import get_profile
from hrvit_edu.train import Budget, StepBatchSampler, evaluate, fit, load_checkpoint, lr_factor, segmentation_loss

CI = get_profile("ci")


@pytest.fixture(scope="module")
def data():
    return digitscenes_bundle(CI.scenes)


def test_lr_schedule_shape():
    b = Budget(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, b) == pytest.approx(0.1)
    assert lr_factor(9, b) == pytest.approx(1.0)
    assert lr_factor(10, b) == pytest.approx(1.0)
    assert lr_factor(55, b) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, b) == pytest.approx(0.1)
    assert all(lr_factor(s, b) >= lr_factor(s + 1, b) for s in range(10, 100))


def test_budget_validation():
    with pytest.raises(ValueError, match="warmup"):
        Budget(steps=10, warmup_steps=10)


def test_batch_sampler_is_a_function_of_the_step():
    full = list(StepBatchSampler(100, 8, seed=1, start=0, stop=30))
    tail = list(StepBatchSampler(100, 8, seed=1, start=17, stop=30))
    assert full[17:] == tail
    ranks = [list(StepBatchSampler(100, 8, seed=1, start=0, stop=30, rank=r, world=2)) for r in range(2)]
    for step in range(30):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(full[step])
    # each epoch visits 12 full batches of distinct samples
    first_epoch = [i for b in full[:12] for i, _ in b]
    assert len(set(first_epoch)) == 96 and all(e == 0 for b in full[:12] for _, e in b)
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(100, 9, 0, 0, 1, world=2)


def test_loss_upsamples_and_ignores():
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 8, 8), 255)
    target[0, 0, 0] = 1
    loss = segmentation_loss(logits, target)
    assert loss.item() == pytest.approx(math.log(3))


def test_fit_learns_something_and_reports(data):
    torch.manual_seed(0)
    model = hrvit_edu.create_model("preface_convnet")
    before = evaluate(model, data.test, 11).miou
    h = fit(model, data, CI.budget.replace(steps=40, lr=5e-3), progress=False)
    assert len(h.loss) == 40 and h.eval_steps[-1] == 40
    assert sum(h.loss[-5:]) < sum(h.loss[:5])
    assert h.test["miou"] >= before and 0 <= h.test["pixel_acc"] <= 1


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, data):
    budget = CI.budget.replace(steps=12, eval_every=4)
    torch.manual_seed(0)
    ref_model = hrvit_edu.create_model("preface_convnet")
    ref = fit(ref_model, data, budget, progress=False)

    torch.manual_seed(0)
    m1 = hrvit_edu.create_model("preface_convnet")
    ckpt = tmp_path / "run.pt"
    partial = fit(m1, data, budget, checkpoint=ckpt, checkpoint_every=3, stop_at=7, progress=False)
    assert partial.test == {} and len(partial.loss) == 7
    torch.manual_seed(123)                       # a fresh process would not share the RNG
    m2 = hrvit_edu.create_model("preface_convnet")
    resumed = fit(m2, data, budget, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.loss == ref.loss
    assert resumed.val_miou == ref.val_miou
    assert resumed.test == ref.test
    for (k, a), b in zip(ref_model.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_from_another_models_checkpoint_is_refused(tmp_path, data):
    ckpt = tmp_path / "a.pt"
    fit(hrvit_edu.create_model("preface_convnet"), data, CI.budget.replace(steps=2, warmup_steps=1, eval_every=0),
        checkpoint=ckpt, progress=False)
    state = load_checkpoint(ckpt, hrvit_edu.create_model("preface_convnet"))   # weights_only load
    assert state["step"] == 2
    other = hrvit_edu.create_model("preface_convnet", widths=(8, 16, 32))
    with pytest.raises(ValueError, match="another model"):
        fit(other, data, CI.budget.replace(steps=4, warmup_steps=1, eval_every=0), checkpoint=ckpt, resume=True,
            progress=False)


def test_batch_larger_than_dataset_is_refused():
    small = digitscenes_bundle(SceneConfig(num_train=8, num_val=8, num_test=8))
    with pytest.raises(ValueError, match="exceeds"):
        fit(hrvit_edu.create_model("preface_convnet"), small, Budget(steps=2, batch_size=16, warmup_steps=0),
            progress=False)


def test_run_cache_returns_the_same_run_without_training(tmp_path, data):
    budget = CI.budget.replace(steps=6, eval_every=3, warmup_steps=1)
    torch.manual_seed(0)
    m1 = hrvit_edu.create_model("preface_convnet")
    h1 = fit(m1, data, budget, cache=tmp_path, progress=False)
    assert not h1.cached and len(list(tmp_path.glob("run-*.pt"))) == 1
    torch.manual_seed(0)
    m2 = hrvit_edu.create_model("preface_convnet")
    h2 = fit(m2, data, budget, cache=tmp_path, progress=False)
    assert h2.cached and h2.test == h1.test and h2.loss == h1.loss
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(1)                           # other initial weights: another run
    h3 = fit(hrvit_edu.create_model("preface_convnet"), data, budget, cache=tmp_path, progress=False)
    assert not h3.cached and len(list(tmp_path.glob("run-*.pt"))) == 2


def test_run_key_tells_apart_configs_with_identical_weights(data):
    from hrvit_edu.train.cache import run_key

    keys = set()
    variants = ({}, {"drop_path": 0.1}, {"des_act": "hardswish"}, {"window": (1, 2, 3, 3)},
                {"mask_value": float("-inf")})
    for kw in variants:
        torch.manual_seed(0)
        keys.add(run_key(hrvit_edu.create_model("hrvit_textbook", **kw), data, CI.budget))
    assert len(keys) == 5
