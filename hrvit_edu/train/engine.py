"""The one training engine of the book: ``fit(model, data, budget)``.

Optimisation: AdamW on the pixel-wise cross entropy (ignore index respected), a learning rate
that warms up linearly for ``warmup_steps`` and then follows a cosine to ``min_lr_ratio * lr``:

    lr(t) = lr * t / T_w                                                    t <  T_w
    lr(t) = lr * (r + (1 - r) * (1 + cos(pi * (t - T_w) / (T - T_w))) / 2)  t >= T_w

with global-norm gradient clipping and bf16 autocast on CUDA.

Determinism: the mini-batch of step ``t`` is a pure function of ``(seed, t)`` (a seeded
permutation per epoch, augmentation seeded per sample), and checkpoints carry the model,
optimiser, schedule, torch RNG state and history.  A run interrupted and resumed therefore ends
with the same weights and metrics as an uninterrupted one.  Under ``torch.distributed`` each
rank takes an interleaved slice of the same global batch and DDP averages the gradients, so
``world_size`` ranks reproduce the single-process run (up to float summation order, and exactly
only for models without batch statistics).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.datasets import DataBundle
from .metrics import SegMetrics, boundary_mask, confusion_matrix, metrics_from_confusion

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much training a run gets.  Profiles (:mod:`hrvit_edu.profiles`) hold named ones."""

    steps: int = 1000
    batch_size: int = 32              # global batch (split across ranks under DDP)
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    eval_every: int = 250             # periodic eval on ``data.val`` (0 = only at the end)
    eval_batch_size: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")

    def replace(self, **kw) -> "Budget":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass
class History:
    steps: list[int] = dataclasses.field(default_factory=list)
    loss: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    val_miou: list[float] = dataclasses.field(default_factory=list)
    test: dict = dataclasses.field(default_factory=dict)      # final SegMetrics.as_dict()
    train_seconds: float = 0.0
    cached: bool = False                                        # loaded from a run cache

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    @property
    def test_miou(self) -> float:
        return self.test.get("miou", float("nan"))

    def plot(self, title: str | None = None):
        """Loss (smoothed) and validation mIoU against the step.  Returns the figure."""
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.8))
        loss = torch.tensor(self.loss)
        k = max(1, len(loss) // 50)
        smooth = F.avg_pool1d(loss[None, None], k, 1)[0, 0] if len(loss) >= k else loss
        a.plot(self.steps, self.loss, alpha=0.3, lw=0.8)
        a.plot(self.steps[k - 1:], smooth.tolist(), lw=1.5)
        a.set(xlabel="step", ylabel="train loss", yscale="log")
        b.plot(self.eval_steps, self.val_miou, marker="o")
        if self.test:
            b.axhline(self.test_miou, ls="--", c="k", lw=0.8, label=f"test {self.test_miou:.3f}")
            b.legend(fontsize=8)
        b.set(xlabel="step", ylabel="val mIoU", ylim=(0, 1))
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig


# --------------------------------------------------------------------------------- helpers
def lr_factor(step: int, budget: Budget) -> float:
    """Multiplier of ``budget.lr`` at ``step`` (warm-up, then cosine to ``min_lr_ratio``)."""
    if step < budget.warmup_steps:
        return (step + 1) / budget.warmup_steps
    t = (step - budget.warmup_steps) / max(1, budget.steps - budget.warmup_steps)
    r = budget.min_lr_ratio
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StepBatchSampler(Sampler):
    """Yields the (this rank's share of the) batch of every step from ``start`` to ``stop``.

    Step ``t`` belongs to epoch ``e = t // (N // B)``; the epoch's order is
    ``randperm(N, seed=(seed, e))``.  Each element is ``(index, epoch)`` so that augmentation
    can be seeded per epoch.  Rank ``r`` of ``w`` takes positions ``r, r + w, ...`` of the batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world: int = 1):
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the dataset size {n}")
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by world size {world}")
        self.n, self.b, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.stop):
            epoch, j = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g), epoch
            batch = perm[j * self.b:(j + 1) * self.b][self.rank::self.world]
            yield [(int(i), epoch) for i in batch]


class _EpochView(Dataset):
    """Adapts a dataset whose ``__getitem__`` takes an index to ``(index, epoch)`` keys."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        index, epoch = key
        if hasattr(self.ds, "set_epoch") and getattr(self.ds, "epoch", None) != epoch:
            self.ds.set_epoch(epoch)
        return self.ds[index]


def model_fingerprint(model: nn.Module) -> str:
    """Class name plus every parameter's name and shape: two models share it iff they load each other."""
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    shapes = ",".join(f"{k}:{tuple(v.shape)}" for k, v in m.state_dict().items())
    return f"{type(m).__name__}|{shapes}"


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255):
    """Mean pixel cross entropy; logits are upsampled bilinearly to the label size if smaller."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class map (B, H, W) for a batch of images (B, C, H, W)."""
    model.eval()
    logits = model(images)
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, ignore_index: int = 255,
             batch_size: int = 100, device: torch.device | str | None = None) -> SegMetrics:
    """Metrics over a whole dataset (sharded across ranks and summed under torch.distributed)."""
    rank, world = _dist()
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    idx = list(range(rank, len(dataset), world))
    for s in range(0, len(idx), batch_size):
        items = [dataset[i] for i in idx[s:s + batch_size]]
        x = torch.stack([a for a, _ in items]).to(device)
        y = torch.stack([b for _, b in items])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = predict(model, x).cpu()
        cm += confusion_matrix(pred, y, num_classes, ignore_index)
    if world > 1:
        dist.all_reduce(cm)
    model.train(was_training)
    return metrics_from_confusion(cm)


@torch.no_grad()
def boundary_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 100,
                      ignore_index: int = 255) -> float:
    """Pixel accuracy restricted to :func:`boundary_mask` pixels (digit outlines, thin strokes)."""
    device = next(model.parameters()).device
    hit = total = 0
    for s in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
        x = torch.stack([a for a, _ in items]).to(device)
        y = torch.stack([b for _, b in items])
        edge = boundary_mask(y, ignore_index)
        pred = predict(model, x).cpu()
        hit += (pred[edge] == y[edge]).sum().item()
        total += edge.sum().item()
    return hit / max(total, 1)


# --------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, scheduler, step: int, history: History) -> None:
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    state = {"format": CHECKPOINT_FORMAT, "fingerprint": model_fingerprint(m),
             "model": m.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "history": history.to_dict(),
             "torch_rng": torch.get_rng_state()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)          # atomic: a crash never leaves half a checkpoint


def load_checkpoint(path, model: nn.Module) -> dict:
    """Read a checkpoint (``weights_only=True``) and check it belongs to ``model``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a hrvit_edu checkpoint (format {state.get('format')!r})")
    mine = model_fingerprint(model)
    if state["fingerprint"] != mine:
        theirs = state["fingerprint"].split("|")[0]
        raise ValueError(f"{path} holds a checkpoint of another model ({theirs}, "
                         f"{state['fingerprint'].count(':')} tensors) than the one given "
                         f"({mine.split('|')[0]}, {mine.count(':')} tensors); refusing to resume")
    return state


# --------------------------------------------------------------------------------- fit
def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return not (os.environ.get("CI") or os.environ.get("TQDM_DISABLE"))


def run_key(model: nn.Module, data: DataBundle, budget: Budget) -> str:
    """Identity of a finished run: model structure, budget, data config, package version."""
    import hashlib
    import json

    from .. import __version__

    desc = {"model": model_fingerprint(model), "budget": dataclasses.asdict(budget),
            "data": repr(getattr(data.train, "config", type(data.train).__name__)),
            "augment": repr(getattr(data.train, "augment", None)), "version": __version__,
            "init": float(sum(p.detach().double().sum() for p in model.parameters()))}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def fit(model: nn.Module, data: DataBundle, budget: Budget, *, device=None,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0,
        resume: bool = False, stop_at: int | None = None, progress: bool | None = None,
        num_workers: int = 0, cache: str | os.PathLike | None = None) -> History:
    """Train ``model`` on ``data.train`` for ``budget.steps`` steps; return the :class:`History`.

    checkpoint / checkpoint_every: where and how often to save (also saved at the end);
    resume: continue from ``checkpoint`` if it exists; stop_at: stop after that many steps (as
    if interrupted; the checkpoint lets a later call finish the run).  The final test metrics
    are computed only when the run reaches ``budget.steps``.
    cache: a folder of finished runs.  A run with the same :func:`run_key` (same model, initial
    weights, budget and data) is loaded instead of retrained, so a later chapter can report
    against an earlier chapter's model without training it again; ``history.cached`` says so.
    """
    if cache is not None and stop_at is None:
        path = Path(cache) / f"run-{run_key(model, data, budget)}.pt"
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            history = History.from_dict(state["history"])
            history.cached = True
            return history
        history = fit(model, data, budget, device=device, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      num_workers=num_workers)
        if _dist()[0] == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
            torch.save({"model": {k: v.cpu() for k, v in m.state_dict().items()},
                        "history": history.to_dict()}, path)
        return history
    rank, world = _dist()
    show = _show_progress(progress) and rank == 0
    if show:
        from tqdm.auto import tqdm      # a widget in Jupyter, a text bar in a terminal
    else:
        from tqdm import tqdm
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=budget.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, budget))
    history, start = History(), 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        history, start = History.from_dict(state["history"]), int(state["step"])
    stop = budget.steps if stop_at is None else min(stop_at, budget.steps)

    sampler = StepBatchSampler(len(data.train), budget.batch_size, budget.seed, start, stop, rank, world)
    loader = DataLoader(_EpochView(data.train), batch_sampler=sampler, num_workers=num_workers)
    bar = tqdm(total=stop - start, disable=not show, desc=type(model).__name__, leave=False)
    model.train()
    t0 = time.perf_counter()
    step = start
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(x)
        loss = segmentation_loss(logits, y, data.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if budget.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        loss_v = loss.detach()
        if world > 1:
            dist.all_reduce(loss_v)
            loss_v /= world
        history.steps.append(step)
        history.loss.append(float(loss_v))
        history.lr.append(scheduler.get_last_lr()[0])
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss_v):.3f}", refresh=False)
        if data.val is not None and budget.eval_every and step % budget.eval_every == 0 and step < budget.steps:
            history.eval_steps.append(step)
            history.val_miou.append(evaluate(model, data.val, data.num_classes, data.ignore_index,
                                             budget.eval_batch_size, device).miou)
        if checkpoint is not None and rank == 0 and checkpoint_every and step % checkpoint_every == 0:
            history.train_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(checkpoint, model, optimizer, scheduler, step, history)
    bar.close()
    history.train_seconds += time.perf_counter() - t0
    if step >= budget.steps:
        if data.val is not None:
            history.eval_steps.append(step)
            history.val_miou.append(evaluate(model, data.val, data.num_classes, data.ignore_index,
                                             budget.eval_batch_size, device).miou)
        history.test = evaluate(model, data.test, data.num_classes, data.ignore_index,
                                budget.eval_batch_size, device).as_dict()
    if checkpoint is not None and rank == 0:
        save_checkpoint(checkpoint, model, optimizer, scheduler, step, history)
    return history


def prediction_gallery(model: nn.Module, dataset: Dataset, n: int = 4, title: str | None = None):
    """image | ground truth | prediction for the first ``n`` samples of ``dataset``."""
    from ..data.viz import show_predictions

    device = next(model.parameters()).device
    items = [dataset[i] for i in range(n)]
    x = torch.stack([a for a, _ in items])
    y = torch.stack([b for _, b in items])
    return show_predictions(x, y, predict(model, x.to(device)).cpu(), n=n, title=title)
