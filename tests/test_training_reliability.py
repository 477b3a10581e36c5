"""Training that resumes exactly, stops on a non-finite loss, and says what is wrong.

The headline test kills a command-line training run with SIGKILL, resumes it, and finds the
same weights and metrics as an uninterrupted run (a model with drop-path, so the RNG matters).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hrvit_edu
from hrvit_edu.data import SceneConfig, digitscenes_bundle
from hrvit_edu.data import digitscenes as DS
from hrvit_edu.train import Budget, fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = SceneConfig(num_train=64, num_val=16, num_test=16)


@pytest.fixture(scope="module")
def data():
    return digitscenes_bundle(TINY)


def _budget(**kw):
    return Budget(**{"steps": 6, "batch_size": 8, "warmup_steps": 1, "eval_every": 3, "eval_batch_size": 16, **kw})


def _model(seed=0):
    torch.manual_seed(seed)
    return hrvit_edu.create_model("hrvit_textbook", drop_path=0.2)


# ------------------------------------------------------------------------------ resume
def test_resume_with_drop_path_is_the_same_run(tmp_path, data):
    torch.manual_seed(123)
    whole = _model()
    h_whole = fit(whole, data, _budget(), checkpoint=tmp_path / "a.pt", progress=False)

    torch.manual_seed(123)
    part = _model()
    fit(part, data, _budget(), checkpoint=tmp_path / "b.pt", checkpoint_every=1, stop_at=4, progress=False)
    torch.manual_seed(999)                               # whatever happened in between
    torch.rand(7)
    part = _model(seed=5)                                # a fresh process would rebuild the model
    h_part = fit(part, data, _budget(), checkpoint=tmp_path / "b.pt", resume=True, progress=False)

    assert h_part.loss == h_whole.loss and h_part.eval_steps == h_whole.eval_steps == [3, 6]
    assert repr(h_part.test) == repr(h_whole.test)                # NaN IoUs compare as text
    for (k, a), (_, b) in zip(whole.state_dict().items(), part.state_dict().items()):
        assert torch.equal(a, b), k


def test_resuming_a_finished_run_changes_nothing(tmp_path, data):
    model = hrvit_edu.create_model("preface_convnet")
    h1 = fit(model, data, _budget(), checkpoint=tmp_path / "c.pt", progress=False)
    stamp = (tmp_path / "c.pt").stat().st_mtime_ns
    h2 = fit(hrvit_edu.create_model("preface_convnet"), data, _budget(), checkpoint=tmp_path / "c.pt",
             resume=True, progress=False)
    assert h2.eval_steps == h1.eval_steps == [3, 6] and repr(h2.test) == repr(h1.test)
    assert (tmp_path / "c.pt").stat().st_mtime_ns == stamp


def _train_cli(*args, **kw):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "hrvit_edu.train", "--model", "hrvit_textbook",
                             "--profile", "ci", "--steps", "16", "--set", "drop_path=0.2", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_a_killed_command_line_run_resumes_to_the_same_result(tmp_path):
    whole = _train_cli("--checkpoint", str(tmp_path / "whole.pt"))
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err

    ckpt = tmp_path / "killed.pt"
    run = _train_cli("--checkpoint", str(ckpt))
    deadline = time.time() + 600
    while time.time() < deadline:                     # wait for a checkpoint mid-run, then kill
        if ckpt.exists() and 0 < torch.load(ckpt, weights_only=True)["step"] < 16:
            break
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 16

    resumed = _train_cli("--checkpoint", str(ckpt), "--resume")
    out2, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    a, b = torch.load(tmp_path / "whole.pt", weights_only=True), torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == 16
    assert a["history"]["loss"] == b["history"]["loss"]
    assert repr(a["history"]["test"]) == repr(b["history"]["test"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert out.split(",")[0] == out2.split(",")[0]            # same printed test mIoU


# ------------------------------------------------------------------------------ non-finite loss
def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data):
    model = hrvit_edu.create_model("preface_convnet")
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step \d+ of 6") as e:
        fit(model, data, _budget(lr=1e30), checkpoint=tmp_path / "d.pt", checkpoint_every=1, progress=False)
    step = int(str(e.value).split("at step ")[1].split()[0])
    assert step >= 2 and "is kept as it was" in str(e.value)
    state = torch.load(tmp_path / "d.pt", weights_only=True)
    assert state["step"] == step - 1                              # the last good one
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_inputs_stop_the_run(data):
    class Poisoned(torch.utils.data.Dataset):
        def __len__(self):
            return len(data.train)

        def __getitem__(self, i):
            x, y = data.train[i]
            return x * float("nan"), y
    bad = type(data)(train=Poisoned(), val=None, test=data.test, num_classes=11, ignore_index=255)
    with pytest.raises(FloatingPointError, match="at step 1 of 6"):
        fit(hrvit_edu.create_model("preface_convnet"), bad, _budget(), progress=False)


# ------------------------------------------------------------------------------ files and messages
def test_caches_are_written_atomically_and_name_a_broken_file(tmp_path, data):
    torch.manual_seed(0)
    model = hrvit_edu.create_model("preface_convnet")
    fit(model, data, _budget(steps=2, eval_every=0), cache=tmp_path / "runs", progress=False)
    (run,) = (tmp_path / "runs").glob("run-*.pt")
    assert not list((tmp_path / "runs").glob("*.tmp"))
    run.write_bytes(run.read_bytes()[:100])                        # truncated
    torch.manual_seed(0)                                           # same initial weights: same key
    with pytest.raises(ValueError, match=rf"could not read the cached run {run}.*delete it"):
        fit(hrvit_edu.create_model("preface_convnet"), data, _budget(steps=2, eval_every=0),
            cache=tmp_path / "runs", progress=False)

    cfg = SceneConfig(num_train=8, num_val=4, num_test=4, seed=77)
    DS.load_scenes(cfg, "val", cache_dir=tmp_path / "scenes")
    (npz,) = (tmp_path / "scenes").glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:50])
    DS._MEMORY_CACHE.clear()
    with pytest.raises(ValueError, match=rf"could not read the DigitScenes cache {npz}"):
        DS.load_scenes(cfg, "val", cache_dir=tmp_path / "scenes")


def test_the_memory_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(DS, "MEMORY_CACHE_BYTES", 1)
    DS._MEMORY_CACHE.clear()
    for seed in (1, 2, 3):
        DS.load_scenes(SceneConfig(num_train=4, num_val=4, num_test=4, seed=seed), "val")
    assert len(DS._MEMORY_CACHE) == 1                               # only the newest survives


def test_checkpoint_messages_say_what_is_wrong(tmp_path, data):
    model = hrvit_edu.create_model("preface_convnet")
    fit(model, data, _budget(steps=1, warmup_steps=0, eval_every=0), checkpoint=tmp_path / "e.pt", progress=False)
    other = hrvit_edu.create_model("preface_convnet", num_classes=5)
    with pytest.raises(ValueError, match=r"classifier.weight is \(11, 24, 1, 1\) in the checkpoint but "
                                         r"\(5, 24, 1, 1\) in the model"):
        load_checkpoint(tmp_path / "e.pt", other)
    torch.save(torch.ones(3), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a hrvit_edu checkpoint \\(a Tensor\\)"):
        load_checkpoint(tmp_path / "bare.pt", model)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="could not read the checkpoint .*junk.pt"):
        load_checkpoint(tmp_path / "junk.pt", model)


def test_fit_refuses_a_backbone_with_a_clear_message(data):
    backbone = hrvit_edu.create_model("preface_convnet", num_classes=0)
    with pytest.raises(ValueError, match=r"returned a list \(a backbone\? build it with num_classes=11\)"):
        fit(backbone, data, _budget(), progress=False)


@pytest.mark.parametrize("kw, message", [({"lr": -1}, "lr must be a positive number"),
                                         ({"eval_batch_size": 0}, "eval_batch_size must be >= 1"),
                                         ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
                                         ({"min_lr_ratio": 2}, r"min_lr_ratio must be in \[0, 1\]")])
def test_budget_refuses_nonsense(kw, message):
    with pytest.raises(ValueError, match=message):
        Budget(**kw)


def test_truncated_images_name_the_file(tmp_path):
    from PIL import Image

    from hrvit_edu.data.folder import SegmentationFolder
    for d in ("images", "annotations"):
        (tmp_path / d).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/a.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "annotations/a.png")
    jpg = tmp_path / "images/a.jpg"
    jpg.write_bytes(jpg.read_bytes()[:40])
    ds = SegmentationFolder(tmp_path, num_classes=3, size=(8, 8))
    with pytest.raises(ValueError, match=r"a\.jpg: cannot read this image"):
        ds[0]


def test_command_line_messages(tmp_path):
    def run(*cmd):
        return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    r = run("hrvit_edu.train", "--resume")
    assert r.returncode == 2 and "--resume needs --checkpoint PATH" in r.stderr
    r = run("hrvit_edu.book", "--only", "99")
    assert r.returncode == 1 and "no chapter in 'chapters' starts with '99'; chapters: 00_preface" in r.stderr
    r = run("hrvit_edu.grading.assign", "--check", "--root", str(tmp_path))
    assert r.returncode == 1 and "no master notebooks" in r.stdout + r.stderr
