"""Two CPU processes with gloo reproduce the single-process run (same global batch)."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hrvit_edu
from hrvit_edu.data import digitscenes_bundle
from hrvit_edu.profiles import get_profile
from hrvit_edu.train import fit

BUDGET = get_profile("ci").budget.replace(steps=6, batch_size=8, eval_every=0, warmup_steps=2)


def _run(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = hrvit_edu.create_model("preface_convnet_gn", widths=(8, 16, 32))
    h = fit(model, digitscenes_bundle(get_profile("ci").scenes), BUDGET, progress=False)
    if rank == 0:
        torch.save({"state": model.state_dict(), "loss": h.loss, "test": h.test},
                   os.path.join(out_dir, "ddp.pt"))
    dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_run, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.manual_seed(0)
    model = hrvit_edu.create_model("preface_convnet_gn", widths=(8, 16, 32))
    h = fit(model, digitscenes_bundle(get_profile("ci").scenes), BUDGET, progress=False)
    for a, b in zip(h.loss, ddp["loss"]):
        assert abs(a - b) < 1e-4
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, atol=1e-4, rtol=1e-3, msg=k)
    assert abs(h.test["miou"] - ddp["test"]["miou"]) < 1e-3


def test_torchrun_cli_two_processes(tmp_path):
    """The documented multi-process entry point: torchrun -m hrvit_edu.train (gloo on CPU)."""
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29531", "-m", "hrvit_edu.train", "--model", "preface_convnet_gn",
                        "--profile", "ci", "--steps", "4", "--checkpoint", str(tmp_path / "c.pt")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[:3000]
    assert r.stdout.count("test mIoU") == 1            # only rank 0 reports
    assert (tmp_path / "c.pt").exists()
