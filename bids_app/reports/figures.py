"""Report figures (matplotlib, object API: no pyplot state, any backend).

Every function returns a :class:`matplotlib.figure.Figure`; :mod:`bids_app.reports.html`
turns it into an embedded image or a file.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .stats import (
    FOREGROUND_FRACTION,
    METRIC_DIRECTION,
    ROBUST_Z,
    SCALE_PERCENTILE,
    histogram,
    profile_array,
    slice_z,
)

#: (name, axis) of the mosaic rows: the RAS axis each slice is taken across.
VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
OUTLIER_COLOR = "#d62728"
REFERENCE_COLOR = "black"


def group_colors(groups):
    """A colour per distinct group label (matplotlib ``tab10``), in sorted order."""
    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(sorted(set(groups)))}


def load_canonical(path):
    """``(data float32, zooms)`` of an image reoriented to RAS."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(img.dataobj, dtype=np.float32), tuple(img.header.get_zooms()[:3])


def _window(*volumes):
    """One display window ``(0, p99.5 of the non-zero voxels of all volumes)``."""
    values = np.concatenate([v[::2, ::2, ::2].ravel() for v in volumes])
    values = values[np.isfinite(values) & (values > 0)]
    return 0.0, float(np.percentile(values, SCALE_PERCENTILE)) if values.size else 1.0


def _slice_positions(volume, axis, n):
    """``n`` slice indices across the foreground along ``axis`` (axial: 35 % to 85 %)."""
    vmax = np.percentile(volume[volume > 0], SCALE_PERCENTILE) if (volume > 0).any() else 0
    profile = (volume > FOREGROUND_FRACTION * vmax).any(
        axis=tuple(a for a in range(3) if a != axis)
    )
    inside = np.nonzero(profile)[0]
    lo, hi = (inside[0], inside[-1]) if inside.size else (0, volume.shape[axis] - 1)
    if axis == 2:  # axial: the foreground reaches down the neck, keep to the brain
        fractions = np.linspace(0.35, 0.85, n) if n > 1 else [0.62]
    else:
        fractions = np.linspace(0.2, 0.8, n) if n > 1 else [0.5]
    return [int(round(lo + f * (hi - lo))) for f in fractions]


def _cut(volume, zooms, axis, index):
    """A 2-D slice oriented for display (rows bottom-up) and its pixel aspect."""
    plane = np.take(volume, index, axis=axis).T
    rest = [a for a in range(3) if a != axis]
    return plane, zooms[rest[1]] / zooms[rest[0]]


def mosaic(harmonized, source=None, *, n_slices=5, compact=False, title=None):
    """Before/after mosaic of source slices over the same harmonized slices.

    Both images are reoriented to RAS and shown with one common grey window
    ``[0, p99.5]`` of their non-zero voxels, so intensity changes are visible.

    Parameters
    ----------
    harmonized, source : path or None
        The harmonized image and its source on the same grid (``source`` may be None).
    n_slices : int
        Slices per view.
    compact : bool
        All views side by side (one row per image) instead of one block of rows per view.
    title : str
        Figure title.
    """
    after, zooms = load_canonical(harmonized)
    before = None
    if source is not None:
        before = load_canonical(source)[0]
        if before.shape != after.shape:
            before = None
    window = _window(after) if before is None else _window(before, after)
    images = ([("source", before)] if before is not None else []) + [("harmonized", after)]
    cuts = [(view, axis, i) for view, axis in VIEWS
            for i in _slice_positions(after, axis, n_slices)]
    per_row = len(cuts) if compact else n_slices
    rows = []  # (label, volume, cuts of the row)
    for start in range(0, len(cuts), per_row):
        block = cuts[start: start + per_row]
        for name, volume in images:
            label = name if compact else f"{name}\n{block[0][0]}"
            rows.append((label, volume, block))

    fig = Figure(figsize=(1.5 * per_row + 0.9, 1.55 * len(rows) + 0.4), facecolor="black")
    axes = fig.subplots(len(rows), per_row, squeeze=False,
                        gridspec_kw={"wspace": 0.02, "hspace": 0.04})
    for (label, volume, block), row_axes in zip(rows, axes):
        for ax, (view, axis, index) in zip(row_axes, block):
            plane, aspect = _cut(volume, zooms, axis, index)
            ax.imshow(plane, cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
                      aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            for spine in ax.spines.values():
                spine.set_visible(False)
        row_axes[0].set_ylabel(label, color="white", fontsize=8)
    fig.subplots_adjust(left=0.9 / fig.get_figwidth(), right=0.995, bottom=0.01,
                        top=1 - 0.4 / fig.get_figheight())
    fig.suptitle(title or "", color="white", fontsize=9, y=0.995, va="top")
    return fig


def intensity_histograms(before, after, groups, *, reference=None):
    """Normalized foreground-intensity histograms before and after, one line per image.

    Parameters
    ----------
    before, after : list of 1-D arrays (or None)
        Normalized intensities (:func:`bids_app.reports.stats.normalize_intensities`)
        of each source and harmonized image.
    groups : list of str
        Site/scanner label of each image (the line colour).
    reference : 1-D array or None
        Normalized intensities of the prior's reference template (the target domain).
    """
    colors = group_colors(groups)
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, data, title in zip(axes, (before, after), ("Before (source)", "After (harmonized)")):
        for values, group in zip(data, groups):
            if values is None or not np.size(values):
                continue
            x, y = histogram(values)
            ax.plot(x, y, color=colors[group], lw=1.1, alpha=0.75)
        if reference is not None and np.size(reference):
            x, y = histogram(reference)
            ax.plot(x, y, color=REFERENCE_COLOR, lw=2, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("intensity / p99.5 of the image (foreground voxels)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    handles = [Line2D([], [], color=c, lw=2, label=g) for g, c in colors.items()]
    if reference is not None:
        handles.append(Line2D([], [], color=REFERENCE_COLOR, lw=2, ls="--",
                              label="target domain (prior's reference template)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 2), fontsize=8,
               frameon=False)
    fig.subplots_adjust(bottom=0.22 + 0.05 * ((len(handles) - 1) // 2), top=0.92, wspace=0.06,
                        left=0.07, right=0.98)
    return fig


def metric_strips(values, groups, labels, flags):
    """Box plot and jittered points of each metric; robust outliers in red and named.

    Parameters
    ----------
    values : dict
        Metric name -> float array (one value per image, ``NaN`` when missing).
    groups, labels : list of str
        Site/scanner label and short name of each image.
    flags : dict
        Metric name -> boolean array of outliers.
    """
    colors = group_colors(groups)
    names = list(values)
    fig = Figure(figsize=(2.6 * len(names) + 0.6, 4.2))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(groups))
    for ax, name in zip(axes, names):
        x = values[name]
        ok = np.isfinite(x)
        if ok.any():
            ax.boxplot(x[ok], positions=[0], widths=0.5, showfliers=False,
                       medianprops={"color": "black"})
        for xi, group, j, bad, label in zip(x, groups, jitter, flags[name], labels):
            if not np.isfinite(xi):
                continue
            ax.scatter(j, xi, s=46 if bad else 18, color=colors[group],
                       edgecolors=OUTLIER_COLOR if bad else "none", linewidths=1.8, zorder=3)
            if bad:
                ax.annotate(label, (j, xi), xytext=(6, 0), textcoords="offset points",
                            fontsize=7, color=OUTLIER_COLOR, va="center")
        side = {-1: "low", 1: "high"}.get(METRIC_DIRECTION.get(name), "")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"{side} = worse" if side else "", fontsize=8)
        ax.set_xticks([])
        ax.set_xlim(-0.6, 0.9)
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=g) for g, c in colors.items()]
    handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec=OUTLIER_COLOR, mew=1.8,
                          label=f"outlier (|robust z| > {ROBUST_Z:g})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8,
               frameon=False)
    fig.subplots_adjust(bottom=0.14 + 0.05 * ((len(handles) - 1) // 3), top=0.92, wspace=0.45,
                        left=0.06, right=0.98)
    return fig


def slice_profile(slice_bpd, flagged, *, source_bpd=None, title=None, small=False):
    """Bits/dim of each axial slice of the reference grid; out-of-domain slices in red.

    Parameters
    ----------
    slice_bpd : list
        ``SliceBitsPerDim`` of a sidecar (``None`` for empty slices: gaps).
    flagged : list of int
        Out-of-domain slice indices (:func:`bids_app.reports.stats.out_of_domain_slices`).
    source_bpd : float or None
        Mean bits/dim of the source slices, drawn as a dotted line.
    """
    y = profile_array(slice_bpd)
    x = np.arange(y.size)
    fig = Figure(figsize=(5.6, 2.2) if small else (9.0, 2.8))
    ax = fig.subplots()
    ax.plot(x, y, color="#1f77b4", lw=1.3, marker="o", ms=2.5, label="harmonized slice")
    if np.isfinite(y).sum() >= 4:
        _, trend, scale = slice_z(slice_bpd)
        if scale > 0:
            ax.plot(x, trend + ROBUST_Z * scale, color=OUTLIER_COLOR, lw=0.9, ls=":",
                    label=f"out-of-domain threshold (robust z {ROBUST_Z:g})")
    if source_bpd is not None:
        ax.axhline(float(source_bpd), color="gray", lw=1, ls="--", label="source (mean)")
    if flagged:
        ax.scatter(flagged, y[flagged], color=OUTLIER_COLOR, s=36, zorder=3,
                   label=f"out of domain ({len(flagged)})")
    ax.set_xlabel("axial slice (reference grid)")
    ax.set_ylabel("bits/dim")
    ax.set_xlim(-0.5, max(y.size, 1) - 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "", fontsize=9)
    fig.tight_layout()
    return fig


def slice_profiles_overview(profiles, groups, labels):
    """All images' per-slice bits/dim overlaid (colour: group); robust-z heat strip below.

    ``profiles`` is a list of ``SliceBitsPerDim`` lists. The strip shows, per image and
    slice, the robust z-score of the slice's rise above its profile's trend
    (:func:`bids_app.reports.stats.slice_z`).
    """
    colors = group_colors(groups)
    arrays = [profile_array(p) for p in profiles]
    width = max((a.size for a in arrays), default=0)
    fig = Figure(figsize=(10, 3.2 + 0.16 * len(arrays)))
    top, bottom = fig.subplots(2, 1, sharex=True,
                               gridspec_kw={"height_ratios": [3, max(1, 0.25 * len(arrays))]})
    grid = np.full((len(arrays), width), np.nan)
    for i, (y, profile, group) in enumerate(zip(arrays, profiles, groups)):
        top.plot(np.arange(y.size), y, color=colors[group], lw=1, alpha=0.8)
        grid[i, : y.size] = slice_z(profile)[0] if y.size else []
    top.set_ylabel("bits/dim")
    top.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, lw=2, label=g) for g, c in colors.items()]
    top.legend(handles=handles, fontsize=7, loc="upper right", frameon=False)
    image = bottom.imshow(np.clip(grid, -ROBUST_Z * 2, ROBUST_Z * 2), aspect="auto",
                          cmap="RdBu_r", vmin=-2 * ROBUST_Z, vmax=2 * ROBUST_Z,
                          interpolation="nearest", extent=(-0.5, width - 0.5, len(arrays), 0))
    bottom.set_yticks(np.arange(len(arrays)) + 0.5)
    bottom.set_yticklabels(labels, fontsize=6)
    bottom.set_xlabel("axial slice (reference grid)")
    fig.colorbar(image, ax=[top, bottom], shrink=0.6, pad=0.01,
                 label=f"robust z (flag > {ROBUST_Z:g})")
    return fig
