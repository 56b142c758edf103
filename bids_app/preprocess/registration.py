"""Affine (12 dof) registration of a T1w image to the prior's reference, FSL-style.

The default engine is SimpleITK (a pip-installable ITK build): Mattes mutual information,
a coarse-to-fine pyramid, a rigid stage that initializes a full affine stage, as FLIRT
does with its search and 12-dof refinement. When FSL is installed the workflow can use
FLIRT instead (:func:`fsl_to_ras` converts its matrix).

All transforms here are 4x4 RAS world matrices ``A`` with ``p_moving = A @ p_fixed``: the
"pull" transform that resamples the moving image onto the fixed grid.

Transform conventions come from nitransforms: ITK's LPS parameters
(:class:`nitransforms.io.itk.ITKLinearTransform`) and FLIRT's matrices
(:func:`nitransforms.linear.load`). Two parts stay outside it, because nitransforms does
them differently: SimpleITK writes and reads the ITK text files (nitransforms prints 6
significant digits and parses float32), and :func:`resample_to_grid` calls
:func:`scipy.ndimage.affine_transform` (``nitransforms.resampling.apply`` gives the same
values, within 2e-6 of the image's range, but builds every grid voxel's coordinates first:
4-5 times slower).
"""

from __future__ import annotations

import shutil

import nibabel as nb
import numpy as np
from nibabel.affines import from_matvec

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(img):
    """Convert a nibabel image to a SimpleITK float32 image (LPS physical space)."""
    import SimpleITK as sitk

    affine = _LPS @ img.affine
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing([float(z) for z in zooms])
    out.SetOrigin([float(o) for o in affine[:3, 3]])
    out.SetDirection([float(d) for d in (affine[:3, :3] / zooms).ravel()])
    return out


def _sitk_to_ras(transform):
    """RAS pull matrix of a SimpleITK affine-like transform (fixed -> moving points).

    ITK's centre of rotation is folded into the translation here, in float64:
    nitransforms would keep it as float32.
    """
    from nitransforms.io.itk import ITKLinearTransform

    matrix = np.reshape(transform.GetMatrix(), (3, 3))
    center = np.asarray(transform.GetCenter())
    translation = np.asarray(transform.GetTranslation()) + center - matrix @ center
    return ITKLinearTransform(from_matvec(matrix, translation)).to_ras()


def _ras_to_sitk(matrix):
    """A SimpleITK ``AffineTransform`` (no centre) of a RAS pull matrix."""
    import SimpleITK as sitk
    from nitransforms.io.itk import ITKLinearTransform

    lps = ITKLinearTransform.from_ras(np.asarray(matrix, dtype=float))["parameters"]
    return sitk.AffineTransform(lps[:3, :3].ravel().tolist(), lps[:3, 3].tolist())


def _smooth_downsample(img, spacing):
    """Gaussian-smooth and resample a SimpleITK image to ``spacing`` mm (speed)."""
    import SimpleITK as sitk

    old = np.array(img.GetSpacing())
    if np.all(old >= spacing * 0.9):
        return img
    sigma = [max(0.0, (spacing**2 - s**2)) ** 0.5 / 2.355 for s in old]
    smooth = sitk.SmoothingRecursiveGaussian(img, sigma) if max(sigma) > 0 else img
    size = [int(np.ceil(n * s / spacing)) for n, s in zip(img.GetSize(), old)]
    return sitk.Resample(
        smooth,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        [spacing] * 3,
        img.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _run_stage(fixed, moving, transform, *, shrink, sigmas, iterations, seed):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.15, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform, method.GetMetricValue()


def register_affine(moving, fixed, *, engine="simpleitk", num_threads=1, seed=42):
    """Estimate the 12-dof affine that aligns ``moving`` to ``fixed``.

    Parameters
    ----------
    moving : nibabel.Nifti1Image
        The subject's T1w image (any orientation and resolution).
    fixed : nibabel.Nifti1Image
        The reference image (the prior's template on its slice grid).
    engine : {"simpleitk"}
        Only SimpleITK runs inside the library; FLIRT runs as a nipype node.
    num_threads : int
        Threads ITK may use.
    seed : int
        Seed of the metric's random sampling (registration is then reproducible).

    Returns
    -------
    numpy.ndarray
        RAS matrix ``A`` with ``p_moving = A @ p_fixed``.
    """
    import SimpleITK as sitk

    if engine != "simpleitk":
        raise ValueError(f"register_affine runs SimpleITK only, not {engine!r}")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(max(1, num_threads)))
    fixed_s = to_sitk(fixed)
    spacing = float(min(fixed_s.GetSpacing()))
    moving_s = _smooth_downsample(to_sitk(moving), spacing)

    # Center of mass alignment, then rigid, then similarity-free 12-dof affine.
    rigid = sitk.CenteredTransformInitializer(
        fixed_s, moving_s, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid, _ = _run_stage(
        fixed_s, moving_s, rigid, shrink=[4, 2], sigmas=[4.0, 2.0], iterations=200, seed=seed
    )
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine, _ = _run_stage(
        fixed_s, moving_s, affine, shrink=[2, 1], sigmas=[2.0, 0.0], iterations=200, seed=seed
    )
    return _sitk_to_ras(affine)


def write_itk_affine(matrix, path):
    """Write a RAS pull matrix as an ITK text transform (``*_xfm.txt``).

    SimpleITK writes the file (``AffineTransform_double_3_3``, every digit of a double);
    nitransforms' writer would round the parameters to 6 significant digits.
    """
    import SimpleITK as sitk

    sitk.WriteTransform(_ras_to_sitk(matrix), str(path))
    return str(path)


def read_itk_affine(path):
    """Read an ITK text affine transform (or a composite holding one) into a RAS pull matrix.

    SimpleITK reads the file in double precision (nitransforms parses float32).
    """
    import SimpleITK as sitk

    transform = sitk.ReadTransform(str(path))
    if transform.GetDimension() != 3:
        raise ValueError(f"{path}: not a 3D transform")
    try:
        transform = sitk.AffineTransform(transform)
    except Exception:  # composite with one affine inside
        transform = sitk.AffineTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    return _sitk_to_ras(transform)


def fsl_to_ras(mat_path, moving, fixed):
    """Convert a FLIRT ``.mat`` (moving -> fixed, FSL convention) to a RAS pull matrix."""
    from nitransforms.linear import load as load_linear

    xfm = load_linear(str(mat_path), fmt="fsl", reference=fixed, moving=moving)
    # nitransforms maps reference (fixed) points to moving points.
    return np.asarray(xfm.matrix, dtype=float)


def flirt_available():
    """Whether FSL's ``flirt`` binary is on the PATH."""
    return shutil.which("flirt") is not None


def resample_to_grid(img, grid, matrix, *, order=1, cval=0.0):
    """Resample ``img`` onto the voxel grid of ``grid`` through the pull matrix.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Moving image.
    grid : nibabel.Nifti1Image
        Image whose shape and affine define the output grid.
    matrix : array (4, 4)
        RAS pull matrix, ``p_img = matrix @ p_grid``.
    order : int
        Spline order (1 = trilinear).

    Returns
    -------
    numpy.ndarray
        float32 array of ``grid.shape[:3]``.
    """
    from scipy.ndimage import affine_transform

    # nitransforms.resampling.apply(Affine(matrix, reference=grid), img, order=order) gives
    # the same values (tests/test_preprocess.py) but 4-5 times slower: it maps every grid
    # voxel's coordinates through the transform before interpolating them.
    vox = np.linalg.inv(img.affine) @ np.asarray(matrix) @ grid.affine
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    return affine_transform(
        data, vox[:3, :3], offset=vox[:3, 3], output_shape=grid.shape[:3], order=order,
        mode="constant", cval=cval, prefilter=order > 1,
    ).astype(np.float32)


def registration_quality(img, grid, matrix):
    """Normalized cross-correlation between the resampled image and the grid image."""
    moved = resample_to_grid(img, grid, matrix)
    ref = np.asanyarray(grid.dataobj, dtype=np.float32)
    a, b = moved - moved.mean(), ref - ref.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def grid_image(shape, affine, data=None):
    """A nibabel image standing for a voxel grid (zeros unless ``data`` is given)."""
    if data is None:
        data = np.zeros(shape, dtype=np.float32)
    return nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine)


def register_to_reference(moving, fixed, *, engine="simpleitk", num_threads=1, seed=42):
    """:func:`register_affine`, and once more against the template's brain for a brain-only
    image.

    A skull-stripped image registered to a whole-head template is pulled toward the head's
    outline (on two IXI-HH fixture subjects stripped in native space: 2.3-2.5 mm mean and
    5-6 mm largest displacement of brain points). When the first result shows an empty scalp
    (:func:`bids_app.preprocess.masks.skull_stripped`) the image is registered again to
    the template times its brain mask (0.3-0.6 mm). Templates on another grid than the
    shipped brain mask's get the first registration only.

    Returns
    -------
    matrix : numpy.ndarray
        RAS matrix ``A`` with ``p_moving = A @ p_fixed``.
    stripped : bool
        Whether the image was found skull-stripped.
    """
    import nibabel as nb

    from .masks import head_mask, skull_stripped, template_brain_mask

    matrix = register_affine(moving, fixed, engine=engine, num_threads=num_threads, seed=seed)
    brain = template_brain_mask()
    if tuple(fixed.shape[:3]) != brain.shape:
        return matrix, False
    template = np.asarray(fixed.dataobj, dtype=np.float32)
    volume = resample_to_grid(moving, fixed, matrix)
    stripped, _ = skull_stripped(volume, head_mask(template), brain)
    if stripped:
        brain_only = nb.Nifti1Image(template * brain, fixed.affine)
        matrix = register_affine(moving, brain_only, engine=engine, num_threads=num_threads,
                                 seed=seed)
    return matrix, stripped
