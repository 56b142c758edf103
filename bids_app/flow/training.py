"""Maximum-likelihood training of the slice flow: Adam, cosine schedule, checkpoints."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import QUANT_LEVELS, dequantize
from .ranking import AdversaryBank, negatives, ranking_loss, ranking_margin, validation_pairs


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


@contextmanager
def evaluating(flow):
    """The flow in eval mode, without gradients; its mode is restored afterwards."""
    was_training = flow.training
    flow.eval()
    try:
        with torch.no_grad():
            yield flow
    finally:
        flow.train(was_training)


def evaluate_bpd(flow, slices, *, batch_size=64, seed=0):
    """Mean bits/dim of ``slices`` (numpy ``(N, 1, H, W)``) with fixed dequantization noise."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with evaluating(flow):
        for start in range(0, len(slices), batch_size):
            batch = torch.from_numpy(slices[start : start + batch_size])
            batch = dequantize(batch, generator=generator).to(flow.device)
            total += float(flow.bits_per_dim(batch).sum())
            count += len(batch)
    return total / max(count, 1)


def make_optimizer(flow, *, lr, steps):
    """Adam with cosine annealing over ``steps`` steps (the paper's schedule)."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    return optimizer, scheduler


def train_flow(flow, train_slices, val_slices, *, steps, batch_size=16, lr=5e-4, seed=0,
               optimizer=None, scheduler=None, state=None, validate_every=200,
               checkpoint_every=200, on_checkpoint=None, on_best=None, flip=True,
               progress=True, max_seconds=None, augment=None, ranking=None):
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
    ranking : bids_app.flow.ranking.Ranking, optional
        Add the contrast-ranking hinge (:mod:`bids_app.flow.ranking`): one negative per
        training slice; validation also reports the hinge and the ranking of fixed pairs,
        and the best model has the lowest bits/dim plus weighted hinge.

    Returns
    -------
    TrainState
    """
    from tqdm.auto import tqdm

    if optimizer is None:
        optimizer, scheduler = make_optimizer(flow, lr=lr, steps=steps)
    state = state or TrainState()
    rng, generator = _random_streams(seed + state.step)
    flow.train()
    if state.step == 0:
        _initialize_actnorm(flow, train_slices, rng, generator)

    pairs, bank = _ranking_setup(ranking, flow, train_slices, val_slices, seed, state.step)
    bar = tqdm(total=steps, initial=state.step, disable=not progress, unit="step",
               dynamic_ncols=True)
    started = time.perf_counter()
    running = None
    while state.step < steps:
        batch = _sample_batch(train_slices, rng, generator, batch_size=batch_size,
                              flip=flip, augment=augment, ranking=ranking)
        running = _train_step(flow, optimizer, scheduler, batch, state, running, bar,
                              ranking=ranking, bank=bank, generator=generator)
        elapsed = time.perf_counter() - started
        out_of_time = max_seconds is not None and elapsed >= max_seconds
        last = state.step >= steps or out_of_time
        if state.step % validate_every == 0 or last:
            _validate(flow, val_slices, state, running=running, elapsed=elapsed,
                      on_best=on_best, write=bar.write, ranking=ranking, pairs=pairs,
                      bank=bank)
        if on_checkpoint is not None and (state.step % checkpoint_every == 0 or last):
            _checkpoint(on_checkpoint, flow, optimizer, scheduler, state, elapsed=elapsed)
        if out_of_time:
            break
    bar.close()
    state.seconds += time.perf_counter() - started
    flow.eval()
    return state


def _ranking_setup(ranking, flow, train_slices, val_slices, seed, step):
    """The fixed validation pairs and the adversary bank of ``ranking`` (None, None without)."""
    if ranking is None:
        return None, None
    pairs = validation_pairs(val_slices, seed=seed + 1, field_share=ranking.field_share)
    bank = AdversaryBank(ranking.adversaries, train_slices.shape[-2:], lr=ranking.adversary_lr,
                         seed=seed + step, device=flow.device) if ranking.adversaries else None
    return pairs, bank


def _random_streams(seed):
    """The numpy generator (slice indices, flips, augmentation) and the torch generator
    (dequantization noise), both seeded with ``seed``: the run's seed plus the step it
    starts at, so that a resumed run does not replay the first run's draws."""
    return np.random.default_rng(seed), torch.Generator(device="cpu").manual_seed(seed)


def _initialize_actnorm(flow, train_slices, rng, generator):
    """Data-dependent actnorm initialization on a large first batch (up to 256 slices)."""
    first = rng.choice(len(train_slices), size=min(len(train_slices), 256), replace=False)
    with torch.no_grad():
        flow(dequantize(torch.from_numpy(train_slices[np.sort(first)]),
                        generator=generator).to(flow.device))


def _sample_batch(train_slices, rng, generator, *, batch_size, flip, augment, ranking=None):
    """One dequantized training batch (CPU tensor ``(B, 1, H, W)``).

    Draws, in this order: the slice indices and whatever ``augment`` draws from ``rng``,
    the left-right flips from ``rng``, then the dequantization noise from ``generator``.
    With ``ranking``, the negatives are drawn from ``rng`` after the flips and dequantized
    after the batch: the result is ``(batch, negatives, jacobian, clean batch)``.
    """
    index = rng.integers(0, len(train_slices), size=batch_size)
    batch = train_slices[index]
    if augment is not None:
        batch = augment(batch, index, rng)
    batch = torch.from_numpy(np.ascontiguousarray(batch))
    if flip:
        flips = torch.from_numpy(rng.random(batch_size) < 0.5)
        batch[flips] = batch[flips].flip(-2)
    if ranking is None:
        return dequantize(batch, generator=generator)
    negative, jacobian = negatives(batch.numpy(), rng, field_share=ranking.field_share)
    return (dequantize(batch, generator=generator),
            dequantize(torch.from_numpy(negative), generator=generator),
            torch.from_numpy(jacobian), batch)


def _train_step(flow, optimizer, scheduler, batch, state, running, bar, ranking=None,
                bank=None, generator=None):
    """One Adam step on the batch's mean bits/dim (gradients clipped at norm 5), plus the
    weighted ranking hinge with ``ranking``.

    Advances ``state.step`` and the progress bar; returns the running mean of the loss
    (exponential, weight 0.02 on the new value; the loss itself at the first step).
    """
    loss = _loss(flow, batch, ranking, bank, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
    optimizer.step()
    if bank is not None:
        bank.step()
    scheduler.step()
    state.step += 1
    value = float(loss.detach())
    running = value if running is None else 0.98 * running + 0.02 * value
    bar.update(1)
    bar.set_postfix(bpd=f"{running:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
    return running


def _loss(flow, batch, ranking, bank=None, generator=None):
    """The batch's mean bits/dim, plus the weighted ranking hinge with ``ranking``.

    With an :class:`~bids_app.flow.ranking.AdversaryBank`, the second half of the
    negatives are the bank's maps of the clean slices (dequantized by ``generator``'s
    noise, without rounding, so that the margin is differentiable in the maps), and the
    bank takes its step on their margins.
    """
    if ranking is None:
        return flow.bits_per_dim(batch.to(flow.device)).mean()
    x, y, jacobian, clean = (t.to(flow.device) for t in batch)
    if bank is not None:
        half = len(x) // 2
        adversarial, adv_jacobian = bank.negatives(clean[half:], clean[half:] > 0)
        noise = torch.rand(adversarial.shape, generator=generator).to(flow.device)
        y = torch.cat([y[:half], adversarial + noise / QUANT_LEVELS])
        jacobian = torch.cat([jacobian[:half].to(adv_jacobian.dtype), adv_jacobian])
    log_p = flow.log_prob(torch.cat([x, y]))
    bits = flow._bits(log_p[: len(x)]).mean()
    margin = ranking_margin(log_p[: len(x)], log_p[len(x):], jacobian, flow.dim)
    if bank is not None:
        bank.update(margin[half:])
    return bits + ranking.weight * ranking_loss(margin, ranking.temperature)


def evaluate_ranking(flow, pairs, *, temperature, batch_size=32, seed=0):
    """``(mean hinge, share ranked right, median margin)`` of fixed validation pairs."""
    generator = torch.Generator().manual_seed(seed)
    x, y, jacobian = pairs
    margins = []
    with evaluating(flow):
        for start in range(0, len(x), batch_size):
            part = slice(start, start + batch_size)
            xs, ys = (dequantize(torch.from_numpy(a[part]), generator=generator)
                      .to(flow.device) for a in (x, y))
            margins.append(ranking_margin(flow.log_prob(xs), flow.log_prob(ys),
                                          torch.from_numpy(jacobian[part]).to(flow.device),
                                          flow.dim).cpu())
    margin = torch.cat(margins)
    return (float(ranking_loss(margin, temperature)), float((margin > 0).double().mean()),
            float(margin.median()))


def evaluate_adversaries(flow, bank, slices, *, seed=0):
    """``(share ranked right, median margin)`` of the bank's maps on clean ``slices``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(slices, dtype=np.float32)).to(flow.device)
    with evaluating(flow):
        y, jacobian = bank.negatives(x, x > 0)
        xs = dequantize(x.cpu(), generator=generator).to(flow.device)
        ys = y + torch.rand(y.shape, generator=generator).to(flow.device) / QUANT_LEVELS
        margin = ranking_margin(flow.log_prob(xs), flow.log_prob(ys), jacobian, flow.dim)
    return float((margin > 0).double().mean()), float(margin.median())


def _validate(flow, val_slices, state, *, running, elapsed, on_best, write, ranking=None,
              pairs=None, bank=None):
    """Record the validation bits/dim in ``state.history``; call ``on_best`` on a new best
    (of the bits/dim, plus the weighted ranking hinge with ``ranking``)."""
    val = evaluate_bpd(flow, val_slices)
    record = {
        "step": state.step,
        "train_bits_per_dim": round(running, 4),
        "val_bits_per_dim": round(val, 4),
        "seconds": round(state.seconds + elapsed, 1),
    }
    objective = val
    extra = ""
    if ranking is not None:
        hinge, share, median = evaluate_ranking(flow, pairs, temperature=ranking.temperature)
        objective = val + ranking.weight * hinge
        record.update(val_ranking_hinge=round(hinge, 5), val_ranking_share=round(share, 4),
                      val_ranking_median_margin=round(median, 5))
        extra = f", ranking hinge {hinge:.5f}, {100 * share:.0f} % ranked right"
        if bank is not None:
            adversarial = evaluate_adversaries(flow, bank, pairs[0])
            record.update(val_adversary_share=round(adversarial[0], 4),
                          val_adversary_median_margin=round(adversarial[1], 5))
            extra += (f"; adversaries {100 * adversarial[0]:.0f} % ranked right, median "
                      f"margin {adversarial[1]:+.4f}")
    state.history.append(record)
    write(
        f"step {state.step}: train {running:.4f} (loss), validation {val:.4f} "
        f"bits/dim{extra} ({record['seconds']:.0f} s)"
        if ranking is not None else
        f"step {state.step}: train {running:.4f} bits/dim, validation {val:.4f} "
        f"bits/dim ({record['seconds']:.0f} s)"
    )
    if objective < state.best_bpd:
        state.best_bpd, state.best_step = objective, state.step
        if on_best is not None:
            on_best(flow, state)


def _checkpoint(on_checkpoint, flow, optimizer, scheduler, state, *, elapsed):
    """Call ``on_checkpoint`` with ``state.seconds`` counting this call's ``elapsed`` time."""
    state_seconds = state.seconds
    state.seconds = state_seconds + elapsed
    on_checkpoint(flow, optimizer, scheduler, state)
    state.seconds = state_seconds
