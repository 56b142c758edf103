"""Simulated scanner shifts of the paper's Table 1 (and a bias-field shift), and more.

Per the paper: the image is min-max normalized, transformed, and min-max normalized again.
:data:`ALL_SHIFTS` are the paper's changes and a bias field with gamma 0.8 (the shifts of
every benchmark); :data:`EXTRA_SHIFTS` go beyond exp, log and power curves (scored by the
quality benchmark): a sigmoid contrast and a compression and an expansion of the
grey/white-matter range (monotone), a B1-like bias field alone (spatial, not an intensity
map) and a slight blur with a mild contrast change (another resolution).

Every shift acts on the image as it is, noise included: a change ``T`` of a noisy image
``x + n`` makes the noise heteroscedastic (its level follows ``T'``), which a real scanner
change does not do (its contrast is in the signal, and its noise is added after). A name
with the suffix :data:`SIGNAL` (``"exp@signal"``) applies the shift to the signal alone
(:func:`signal_domain`): the image is split into a denoised part and the residual, the
shift changes the denoised part, and the residual is added back as it was.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .metrics import minmax


def bias_field(shape, *, strength=0.35, seed=0):
    """A smooth multiplicative field (B1-like): a random low-order polynomial, mean 1."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    terms = [g for g in grids] + [g * h for i, g in enumerate(grids) for h in grids[i:]]
    for term in terms:
        field += rng.normal() * term
    field /= np.abs(field).max() + 1e-12
    return 1.0 + strength * field


SHIFTS = {
    "identity": lambda x: x,
    "exp": np.exp,
    "log": lambda x: np.log1p(x),
    "gamma0.7": lambda x: x**0.7,
    "gamma1.5": lambda x: x**1.5,
}


#: Grey- and white-matter levels of min-max normalized IXI-HH volumes (about the 40th and
#: 90th percentiles of the head voxels above 0.1 in the reference space; the maximum is a
#: bright vessel or fat voxel): the range that the grey/white-matter shifts act on, as in
#: ``benchmarks/prior_contrast.py``.
GM_WM = (0.25, 0.42)


def sigmoid_contrast(x, *, slope=15.0, center=sum(GM_WM) / 2):
    """Logistic curve ``1 / (1 + exp(-slope (x - center)))``: increasing, steepest at
    ``center`` (default between grey and white matter), flat in the dark and bright ends."""
    return 1.0 / (1.0 + np.exp(-slope * (np.asarray(x, dtype=np.float64) - center)))


def gm_wm_contrast(x, slope, *, gm_wm=GM_WM):
    """Piecewise-linear map of [0, 1] onto itself with slope ``slope`` on ``gm_wm``.

    ``slope < 1`` compresses the grey/white-matter range (less tissue contrast), ``slope >
    1`` expands it; the intensities below and above it are rescaled alike (one common
    slope) so that 0 and 1 stay fixed. Increasing for ``0 < slope < 1 / (b - a)``.
    """
    a, b = gm_wm
    rest = (1.0 - slope * (b - a)) / (1.0 - (b - a))
    if slope <= 0 or rest <= 0:
        raise ValueError(f"slope {slope} does not give an increasing map on {gm_wm}")
    knots = [0.0, a, b, 1.0]
    values = [0.0, rest * a, rest * a + slope * (b - a), 1.0]
    return np.interp(np.asarray(x, dtype=np.float64), knots, values)


#: Full width at half maximum (mm) of the blur of ``"blur+gamma0.8"``: a slightly lower
#: resolution (0.75 voxel of IXI-HH's 2 mm). The blur alone against the unblurred IXI052
#: (2 mm, the benchmarks' per-slice PSNR): over 99 dB at 1 mm FWHM (no visible change),
#: 48 dB at 1.5 mm, 30 dB at 2 mm, 21 dB at 3 mm (which no intensity map can undo).
BLUR_FWHM = 1.5


def blur(x, fwhm, voxel_size):
    """Gaussian blur of full width at half maximum ``fwhm`` (mm) on a grid of ``voxel_size``
    (mm per array axis); SciPy's ``gaussian_filter``, zero outside the volume."""
    sigma = [fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / float(v) for v in voxel_size]
    return gaussian_filter(np.asarray(x, dtype=np.float64), sigma, mode="constant")


#: Shifts beyond :data:`SHIFTS` and ``"bias+gamma0.8"``: name -> ``f(x, seed, voxel_size)``
#: on the min-max normalized volume.
EXTRA = {
    "sigmoid": lambda x, seed, zooms: sigmoid_contrast(x),
    "gmwm0.5": lambda x, seed, zooms: gm_wm_contrast(x, 0.5),
    "gmwm1.5": lambda x, seed, zooms: gm_wm_contrast(x, 1.5),
    "bias40": lambda x, seed, zooms: x * bias_field(x.shape, strength=0.4, seed=seed),
    "blur+gamma0.8": lambda x, seed, zooms: blur(x**0.8, BLUR_FWHM, zooms),
}


#: Suffix of a shift name that applies the shift to the signal alone (:func:`signal_domain`).
SIGNAL = "@signal"


def split_noise(x):
    """``(signal, residual)`` of a min-max normalized volume ``x``: non-local means
    (scikit-image's ``denoise_nl_means``, 3 x 3 x 3 patches, search distance 3, filtering
    strength 0.8 sigma) with sigma the median absolute deviation of ``x`` minus its 3 x 3 x 3
    median filter over the voxels above 0.1, scaled to a standard deviation; the residual
    is ``x - signal``."""
    from scipy.ndimage import median_filter
    from skimage.restoration import denoise_nl_means

    x = np.asarray(x, dtype=np.float64)
    high = x - median_filter(x, 3)
    sigma = 1.4826 * float(np.median(np.abs(high[x > 0.1])))
    signal = denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, patch_size=3,
                              patch_distance=3, fast_mode=True)
    return signal, x - signal


def signal_domain(volume, name, *, seed=0, voxel_size=None):
    """The shift ``name`` (no suffix) applied to the signal, the noise added after.

    ``x`` (min-max normalized) is split into ``signal + residual`` (:func:`split_noise`);
    the result is ``apply_shift(signal) + residual``, min-max normalized: the residual
    keeps its level in the normalized units, the same everywhere, as on another scanner.
    An ideal inverse map gives back ``x`` up to the residual reshaped by the map's slope.
    """
    x = minmax(volume)
    signal, residual = split_noise(x)
    y = apply_shift(signal, name, seed=seed, voxel_size=voxel_size) + residual
    return minmax(np.clip(y, 0.0, None)).astype(np.float32)


def apply_shift(volume, name, *, seed=0, voxel_size=None):
    """Apply a named shift to a volume; returns float32 in [0, 1].

    Parameters
    ----------
    volume : array_like
        The unshifted image (any intensity units).
    name : str
        One of :data:`SHIFTS`, ``"bias+gamma0.8"`` (a smooth multiplicative field of +-35 %,
        then gamma 0.8) or one of :data:`EXTRA`: ``"sigmoid"`` (:func:`sigmoid_contrast`),
        ``"gmwm0.5"`` and ``"gmwm1.5"`` (:func:`gm_wm_contrast` with slope 0.5, a
        compression, and 1.5, an expansion, of the grey/white-matter range), ``"bias40"``
        (a smooth multiplicative field of +-40 % alone, :func:`bias_field`) and
        ``"blur+gamma0.8"`` (gamma 0.8, then a Gaussian blur of :data:`BLUR_FWHM` mm).
        Any of them with the suffix :data:`SIGNAL` (``"exp@signal"``) acts on the signal
        alone (:func:`signal_domain`).
    seed : int
        Seed of the bias fields (the other shifts do not depend on it).
    voxel_size : sequence of float, optional
        Voxel size (mm) along the array's axes; needed by ``"blur+gamma0.8"`` only.

    Returns
    -------
    numpy.ndarray
        float32 in [0, 1], the shape of ``volume``: the min-max normalized volume,
        transformed, min-max normalized again. The monotone shifts send 0 to 0; the
        bias fields multiply, and the blur spreads the head over a few background voxels
        next to it only.
    """
    if name.endswith(SIGNAL):
        return signal_domain(volume, name[: -len(SIGNAL)], seed=seed, voxel_size=voxel_size)
    x = minmax(volume)
    if name == "bias+gamma0.8":
        y = minmax(x * bias_field(x.shape, seed=seed)) ** 0.8
    elif name in SHIFTS:
        y = SHIFTS[name](x)
    elif name in EXTRA:
        if name.startswith("blur") and voxel_size is None:
            raise ValueError(f"shift {name!r} needs the voxel size (voxel_size=...)")
        y = EXTRA[name](x, seed, voxel_size)
    else:
        raise ValueError(f"unknown shift {name!r}")
    return minmax(y).astype(np.float32)


#: The paper's shifts and a bias field with gamma 0.8: the shifts of every benchmark.
ALL_SHIFTS = ["identity", "exp", "log", "gamma0.7", "gamma1.5", "bias+gamma0.8"]
#: More shifts, scored by the quality benchmark besides :data:`ALL_SHIFTS`.
EXTRA_SHIFTS = list(EXTRA)


def skull_strip(native, matrix, *, dilation=0):
    """A brain-extracted copy of a native image, as a brain-extraction tool would leave it.

    The shipped template's brain mask (:func:`bids_app.preprocess.masks.template_brain_mask`)
    is carried into the image's space through its registration ``matrix`` (``p_native =
    matrix @ p_reference``, :func:`bids_app.preprocess.registration.register_affine`),
    optionally dilated by ``dilation`` native voxels (a looser extraction), and everything
    outside it is set to 0. Returns a nibabel image with the input's affine and header.
    """
    import nibabel as nb
    from scipy.ndimage import binary_dilation, map_coordinates

    from ..preprocess.masks import template_brain_mask
    from ..utils.templates import template_path

    reference = nb.load(str(template_path("mask", desc="brain")))
    ijk = np.indices(native.shape[:3]).reshape(3, -1)
    ras = native.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    vox = np.linalg.inv(reference.affine) @ np.linalg.inv(matrix) @ ras
    inside = map_coordinates(template_brain_mask().astype(np.float32), vox[:3], order=1)
    mask = inside.reshape(native.shape[:3]) > 0.5
    if dilation:
        mask = binary_dilation(mask, iterations=dilation)
    data = np.asanyarray(native.dataobj)
    return nb.Nifti1Image(np.where(mask, data, 0).astype(data.dtype), native.affine,
                          native.header)
