"""Maximum-likelihood training of the slice flow: Adam, cosine schedule, checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import dequantize


def select_device(device="auto"):
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


@dataclass
class TrainState:
    """Everything needed to resume a run."""

    step: int = 0
    best_bpd: float = math.inf
    best_step: int = -1
    history: list = field(default_factory=list)  # dicts: step, train_bpd, val_bpd, seconds
    seconds: float = 0.0


@torch.no_grad()
def evaluate_bpd(flow, slices, *, batch_size=64, seed=0):
    """Mean bits/dim of ``slices`` (numpy ``(N, 1, H, W)``) with fixed dequantization noise."""
    was_training = flow.training
    flow.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(slices), batch_size):
        batch = torch.from_numpy(slices[start : start + batch_size])
        batch = dequantize(batch, generator=generator).to(flow.device)
        total += float(flow.bits_per_dim(batch).sum())
        count += len(batch)
    flow.train(was_training)
    return total / max(count, 1)


def make_optimizer(flow, *, lr, steps):
    """Adam with cosine annealing over ``steps`` steps (the paper's schedule)."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    return optimizer, scheduler


def train_flow(
    flow,
    train_slices,
    val_slices,
    *,
    steps,
    batch_size=16,
    lr=5e-4,
    seed=0,
    optimizer=None,
    scheduler=None,
    state=None,
    validate_every=200,
    checkpoint_every=200,
    on_checkpoint=None,
    on_best=None,
    flip=True,
    progress=True,
    max_seconds=None,
    augment=None,
):
    """Train ``flow`` by maximum likelihood on dequantized slices.

    Parameters
    ----------
    flow : SliceFlow
    train_slices, val_slices : numpy arrays ``(N, 1, H, W)`` in [0, 1]
    steps : int
        Total number of optimizer steps (the cosine schedule's length).
    optimizer, scheduler, state
        Pass the ones from a checkpoint to resume.
    validate_every : int
        Steps between validations; ``on_best(flow, state)`` is called on a new best.
    checkpoint_every : int
        Steps between ``on_checkpoint(flow, optimizer, scheduler, state)`` calls.
    flip : bool
        Left-right flip augmentation (the head is nearly symmetric).
    max_seconds : float, optional
        Stop (after checkpointing) when this much wall time has been spent in this call.
    augment : callable, optional
        ``augment(batch, index, rng) -> batch`` on numpy ``(B, 1, H, W)`` slices (the
        training slices at ``index``) before dequantization: the companion's random
        contrast, the masking of :mod:`bids_app.flow.augment`.

    Returns
    -------
    TrainState
    """
    from tqdm.auto import tqdm

    device = flow.device
    if optimizer is None:
        optimizer, scheduler = make_optimizer(flow, lr=lr, steps=steps)
    state = state or TrainState()
    rng = np.random.default_rng(seed + state.step)
    generator = torch.Generator(device="cpu").manual_seed(seed + state.step)
    flow.train()
    if state.step == 0:
        # Data-dependent actnorm initialization on a large first batch.
        first = rng.choice(len(train_slices), size=min(len(train_slices), 256), replace=False)
        with torch.no_grad():
            flow(dequantize(torch.from_numpy(train_slices[np.sort(first)]),
                            generator=generator).to(device))

    bar = tqdm(total=steps, initial=state.step, disable=not progress, unit="step",
               dynamic_ncols=True)
    started = time.perf_counter()
    running = None
    while state.step < steps:
        index = rng.integers(0, len(train_slices), size=batch_size)
        batch = train_slices[index]
        if augment is not None:
            batch = augment(batch, index, rng)
        batch = torch.from_numpy(np.ascontiguousarray(batch))
        if flip:
            flips = torch.from_numpy(rng.random(batch_size) < 0.5)
            batch[flips] = batch[flips].flip(-2)
        batch = dequantize(batch, generator=generator).to(device)
        loss = flow.bits_per_dim(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.update(1)
        bar.set_postfix(bpd=f"{running:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")

        elapsed = time.perf_counter() - started
        out_of_time = max_seconds is not None and elapsed >= max_seconds
        last = state.step >= steps or out_of_time
        if state.step % validate_every == 0 or last:
            val = evaluate_bpd(flow, val_slices)
            record = {
                "step": state.step,
                "train_bits_per_dim": round(running, 4),
                "val_bits_per_dim": round(val, 4),
                "seconds": round(state.seconds + elapsed, 1),
            }
            state.history.append(record)
            bar.write(
                f"step {state.step}: train {running:.4f} bits/dim, validation {val:.4f} "
                f"bits/dim ({record['seconds']:.0f} s)"
            )
            if val < state.best_bpd:
                state.best_bpd, state.best_step = val, state.step
                if on_best is not None:
                    on_best(flow, state)
        if on_checkpoint is not None and (state.step % checkpoint_every == 0 or last):
            state_seconds = state.seconds
            state.seconds = state_seconds + elapsed
            on_checkpoint(flow, optimizer, scheduler, state)
            state.seconds = state_seconds
        if out_of_time:
            break
    bar.close()
    state.seconds += time.perf_counter() - started
    flow.eval()
    return state
