"""The one training loop of the book: ``fit(model, data, budget)``.

Optimisation: AdamW on the pixel-wise cross entropy (ignore index respected), the learning rate
of :mod:`.budget` (linear warm-up, cosine to ``min_lr_ratio * lr``), global-norm gradient
clipping and bf16 autocast on CUDA.

Determinism: the mini-batch of step ``t`` is a pure function of ``(seed, t)`` (a seeded
permutation per epoch, augmentation seeded per sample); the DataLoader draws from its own
generator, never the global one; checkpoints carry the model, optimiser, schedule, torch RNG
state and history.  A run interrupted (even by SIGKILL) and resumed therefore ends with the same
weights and metrics as an uninterrupted one, dropout and drop-path included.  Under
``torch.distributed`` each rank takes an interleaved slice of the same global batch and DDP
averages the gradients, so ``world_size`` ranks reproduce the single-process run (up to float
summation order, and exactly only for models without batch statistics).

A non-finite loss stops the run with an error naming the step; the last checkpoint written
before it (if any) is left as it was.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.constants import IGNORE_INDEX
from ..data.datasets import DataBundle
from .budget import Budget, lr_factor
from .cache import load_run, run_path, store_run
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import rank_world
from .evaluate import evaluate
from .history import History


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


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Mean pixel cross entropy; logits are upsampled bilinearly to the label size if smaller."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def _check_logits(model: nn.Module, logits, num_classes: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[1] != num_classes:
        got = (f"a {type(logits).__name__}" if not isinstance(logits, torch.Tensor)
               else f"shape {tuple(logits.shape)}")
        raise ValueError(f"fit trains a segmentation model whose output is logits (B, {num_classes}, H, W); "
                         f"{type(model).__name__} returned {got} (a backbone? build it with "
                         f"num_classes={num_classes})")


def _aux_weights(model: nn.Module) -> tuple[float, ...]:
    return tuple(getattr(model, "aux_loss_weights", ()))


def _check_outputs(model: nn.Module, out, num_classes: int) -> None:
    """Logits, or in training a tuple (logits, *aux_logits) with one weight per auxiliary output
    in ``model.aux_loss_weights`` (e.g. RTFormer's auxiliary head, weight 0.4)."""
    outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != 1 + len(_aux_weights(model)):
        raise ValueError(f"{type(model).__name__} returned {len(outs)} outputs in training but names "
                         f"{len(_aux_weights(model))} auxiliary loss weights (model.aux_loss_weights)")
    for t in outs:
        _check_logits(model, t, num_classes)


def training_loss(model: nn.Module, out, target: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """L = CE(logits) + sum_k w_k CE(aux_k): the main loss plus the model's weighted auxiliary losses."""
    if not isinstance(out, tuple):
        return segmentation_loss(out, target, ignore_index)
    loss = segmentation_loss(out[0], target, ignore_index)
    for w, aux in zip(_aux_weights(model), out[1:]):
        loss = loss + w * segmentation_loss(aux, target, ignore_index)
    return loss


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return not (os.environ.get("CI") or os.environ.get("TQDM_DISABLE"))


def fit(model: nn.Module, data: DataBundle, budget: Budget, *, device=None,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0,
        resume: bool = False, stop_at: int | None = None, progress: bool | None = None,
        num_workers: int = 0, cache: str | os.PathLike | None = None) -> History:
    """Train ``model`` on ``data.train`` for ``budget.steps`` steps; return the :class:`History`.

    checkpoint / checkpoint_every: where and how often to save (also saved at the end);
    resume: continue from ``checkpoint`` if it exists (a finished run is returned as it is);
    stop_at: stop after that many steps (as if interrupted; the checkpoint lets a later call
    finish the run).  The final test metrics are computed only when the run reaches ``budget.steps``.
    cache: a folder of finished runs.  A run with the same :func:`~.cache.run_key` (same model,
    initial weights, budget and data) is loaded instead of retrained; ``history.cached`` says so.
    """
    if cache is not None and stop_at is None:
        path = run_path(cache, model, data, budget)
        if path.exists():
            return load_run(path, model)
        history = fit(model, data, budget, device=device, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      num_workers=num_workers)
        if rank_world()[0] == 0:
            store_run(path, model, history)
        return history
    rank, world = rank_world()
    show = _show_progress(progress) and rank == 0
    if show:
        from tqdm.auto import tqdm  # a widget in Jupyter, a text bar in a terminal
    else:
        from tqdm import tqdm
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # no weight decay on 1-D parameters (norms, biases, scales), nor on what the model names
    # (``model.no_weight_decay()``: e.g. TransNeXt's query embeddings and position-bias MLPs)
    named_free = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    free = lambda n, p: p.ndim <= 1 or n in named_free
    decay = [p for n, p in model.named_parameters() if not free(n, p) and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if free(n, p) and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=budget.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, budget))
    history, start = History(), 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model)
        model.load_state_dict(state["model"])
        history, start = History.from_dict(state["history"]), int(state["step"])
        if start >= budget.steps:
            return history                      # finished already: nothing to redo, no second eval
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    stop = budget.steps if stop_at is None else min(stop_at, budget.steps)

    sampler = StepBatchSampler(len(data.train), budget.batch_size, budget.seed, start, stop, rank, world)
    # The loader's own generator: making its iterator must not draw from the global RNG, or a
    # resumed run's dropout would see other numbers than the uninterrupted run's.
    loader = DataLoader(_EpochView(data.train), batch_sampler=sampler, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(budget.seed))
    bar = tqdm(total=stop - start, disable=not show, desc=type(model).__name__, leave=False)
    model.train()
    t0 = time.perf_counter()
    step = start
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = net(x)
        if step == start:
            _check_outputs(model, out, data.num_classes)
        loss = training_loss(model, out, y, data.ignore_index)
        loss_v = loss.detach()
        if world > 1:
            dist.all_reduce(loss_v)
            loss_v /= world
        if not torch.isfinite(loss_v):
            bar.close()
            kept = f"; the last checkpoint ({checkpoint}) is kept as it was" if checkpoint else ""
            raise FloatingPointError(f"non-finite training loss ({float(loss_v)}) at step {step + 1} of "
                                     f"{budget.steps} (lr {scheduler.get_last_lr()[0]:.3g}): check the "
                                     f"learning rate and the inputs{kept}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if budget.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
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
