"""The participant-level workflow: one sub-workflow per subject, one per T1w image.

::

    blindharmony_wf
      single_subject_<label>_wf           one per participant
        prior_reference                   the prior's reference grid
        t1w_[ses_<s>_][acq_<a>_]..[run_<r>_]wf   one per T1w image
          load_t1w -> register_wf -> to_reference -> harmonize -> to_native -> ds_t1w_wf
                      register [-> fsl_to_itk]   (FLIRT's matrix to ITK text)
        merge_t1w -> ds_report_wf          the subject's HTML report, after all its images

Every node lives under its participant's workflow, so participant-level runs of
different participants can run at the same time with the same work folder (a node
folder shared by two processes is a race in nipype's cache: one of them crashes).
"""

import shutil

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.harmonize import Harmonize, ResampleToGrid, ToNative
from ..interfaces.image import LoadT1w
from ..interfaces.prior import PriorReference
from ..interfaces.registration import FSLToITK, RegisterAffine
from ..utils.derivatives import source_entities
from .outputs import init_ds_report_wf, init_ds_t1w_wf

#: Short names of the entities that tell apart the T1w images of one participant.
_NAME_ENTITIES = (
    ("session", "ses"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("run", "run"),
    ("part", "part"),
    ("chunk", "chunk"),
)


def t1w_wf_name(t1w_file):
    """A nipype-valid, per-participant unique workflow name for a T1w image.

    >>> t1w_wf_name("/d/sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-02_T1w.nii.gz")
    't1w_ses_1_acq_fast_run_02_wf'
    >>> t1w_wf_name("/d/sub-01/anat/sub-01_T1w.nii.gz")
    't1w_wf'
    """
    entities = source_entities(t1w_file)
    parts = [f"{short}_{entities[key]}" for key, short in _NAME_ENTITIES if key in entities]
    return "_".join(["t1w", *parts, "wf"])


def resolve_engine(engine):
    """``auto`` -> ``flirt`` when FSL's ``flirt`` is on the PATH, else ``simpleitk``."""
    if engine == "auto":
        return "flirt" if shutil.which("flirt") else "simpleitk"
    return engine


def init_blindharmony_wf(
    *,
    subject_files,
    bids_dir,
    output_dir,
    work_dir,
    prior_path,
    space,
    resolution,
    prior=None,
    method=None,
    params=None,
    device="cpu",
    registration_engine="auto",
    omp_nthreads=1,
    name="blindharmony_wf",
):
    """Harmonize every selected T1w image of every selected participant.

    Parameters
    ----------
    subject_files : dict
        Participant label -> list of T1w paths (:func:`bids_app.utils.bids.collect_t1w`).
    bids_dir, output_dir, work_dir : str
        Input dataset, output dataset and nipype work folder.
    prior_path : str or None
        Prior bundle; ``None`` is the shipped prior.
    space, resolution : str, float
        The prior's reference space and grid voxel size (mm), for output names.
    prior : dict
        ``{"Name", "Version", "SHA256"}`` of the prior, recorded in the sidecars.
    method : str
        Harmonization method (a name of :data:`bids_app.harmonize.methods.METHODS`; ``None``:
        the prior's own).
    params : dict
        Hyperparameter overrides (``None`` or missing: the prior's recorded default).
    device : str
        torch device (``cpu`` or ``cuda``; ``auto`` resolved by the caller).
    registration_engine : str
        ``auto``, ``simpleitk`` or ``flirt``.
    omp_nthreads : int
        Threads per node.
    name : str
        Workflow name.
    """
    workflow = pe.Workflow(name=name)
    workflow.base_dir = str(work_dir)

    for subject_id in sorted(subject_files):
        single_subject_wf = init_single_subject_wf(
            subject_id=subject_id,
            t1w_files=subject_files[subject_id],
            bids_dir=bids_dir,
            output_dir=output_dir,
            prior_path=prior_path,
            space=space,
            resolution=resolution,
            prior=prior,
            method=method,
            params=params,
            device=device,
            registration_engine=registration_engine,
            omp_nthreads=omp_nthreads,
        )
        workflow.add_nodes([single_subject_wf])
    return workflow


def init_single_subject_wf(
    *,
    subject_id,
    t1w_files,
    bids_dir,
    output_dir,
    prior_path,
    space,
    resolution,
    prior=None,
    method=None,
    params=None,
    device="cpu",
    registration_engine="auto",
    omp_nthreads=1,
    name=None,
):
    """Harmonize every T1w image of one participant, each in its own sub-workflow.

    Parameters
    ----------
    subject_id : str
        Participant label (without ``sub-``).
    t1w_files : list of str
        The participant's T1w images (all sessions, acquisitions and runs).
    name : str
        Workflow name (default ``single_subject_<subject_id>_wf``).

    The other parameters are those of :func:`init_blindharmony_wf`.

    The prior's reference image (the slice grid) is written by this workflow's own
    ``prior_reference`` node, not shared between participants.
    """
    workflow = pe.Workflow(name=name or f"single_subject_{subject_id}_wf")
    prior_reference = pe.Node(PriorReference(), name="prior_reference")
    if prior_path is not None:
        prior_reference.inputs.prior_path = str(prior_path)
    merge_t1w = pe.Node(niu.Merge(len(t1w_files)), name="merge_t1w",
                        run_without_submitting=True)
    ds_report_wf = init_ds_report_wf(
        subject_id=subject_id, bids_dir=bids_dir, output_dir=output_dir
    )
    workflow.connect(merge_t1w, "out", ds_report_wf, "inputnode.t1w_harmonized")

    names = [t1w_wf_name(f) for f in t1w_files]
    if len(set(names)) != len(names):
        raise ValueError(f"sub-{subject_id}: two T1w images with the same entities")
    for index, (t1w_file, wf_name) in enumerate(zip(t1w_files, names), start=1):
        t1w_harmonize_wf = init_t1w_harmonize_wf(
            bids_dir=bids_dir,
            output_dir=output_dir,
            prior_path=prior_path,
            space=space,
            resolution=resolution,
            prior=prior,
            method=method,
            params=params,
            device=device,
            registration_engine=registration_engine,
            omp_nthreads=omp_nthreads,
            name=wf_name,
        )
        t1w_harmonize_wf.inputs.inputnode.t1w_file = str(t1w_file)
        # fmt: off
        workflow.connect([
            (prior_reference, t1w_harmonize_wf, [("reference", "inputnode.reference")]),
            (t1w_harmonize_wf, merge_t1w, [("outputnode.t1w_harmonized", f"in{index}")]),
        ])
        # fmt: on
    return workflow


def init_t1w_harmonize_wf(
    *,
    bids_dir,
    output_dir,
    prior_path,
    space,
    resolution,
    prior=None,
    method=None,
    params=None,
    device="cpu",
    registration_engine="auto",
    omp_nthreads=1,
    name="t1w_harmonize_wf",
):
    """Register (:func:`init_register_wf`), harmonize and write one T1w image.

    Parameters are those of :func:`init_blindharmony_wf`.

    Inputs
    ------
    t1w_file
        The raw T1w image.
    reference
        The prior's reference image (the slice grid).

    Outputs
    -------
    t1w_harmonized
        The harmonized image on the native grid (in the output dataset).
    std_t1w_harmonized
        The harmonized image on the reference grid (in the output dataset).
    t1w2std_xfm
        The affine from the T1w to the reference, ITK text (in the output dataset).
    metrics
        Quality metrics of the harmonization.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_file", "reference"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["t1w_harmonized", "std_t1w_harmonized", "t1w2std_xfm", "metrics"]),
        name="outputnode")

    load_t1w = pe.Node(LoadT1w(), name="load_t1w", mem_gb=1)
    register_wf = init_register_wf(registration_engine=registration_engine,
                                   omp_nthreads=omp_nthreads)
    to_reference = pe.Node(ResampleToGrid(), name="to_reference")
    harmonize = _harmonize_node(prior_path=prior_path, method=method, params=params,
                                device=device, omp_nthreads=omp_nthreads)
    to_native = pe.Node(ToNative(), name="to_native", mem_gb=2)
    ds_t1w_wf = init_ds_t1w_wf(bids_dir=bids_dir, output_dir=output_dir, space=space,
                               resolution=resolution, prior=prior)

    # fmt: off
    workflow.connect([
        (inputnode, load_t1w, [("t1w_file", "in_file")]),
        (load_t1w, register_wf, [("out_file", "inputnode.moving_image")]),
        (inputnode, register_wf, [("reference", "inputnode.reference")]),
        (load_t1w, to_reference, [("out_file", "in_file")]),
        (inputnode, to_reference, [("reference", "reference")]),
        (register_wf, to_reference, [("outputnode.transform", "transform")]),
        (to_reference, harmonize, [("out_file", "in_file")]),
        (load_t1w, to_native, [("out_file", "native_file")]),
        (inputnode, to_native, [("t1w_file", "source_file"), ("reference", "reference")]),
        (harmonize, to_native, [("out_map", "in_map")]),
        (register_wf, to_native, [("outputnode.transform", "transform")]),
        (inputnode, ds_t1w_wf, [("t1w_file", "inputnode.source_file")]),
        (to_native, ds_t1w_wf, [("out_file", "inputnode.t1w_harmonized")]),
        (harmonize, ds_t1w_wf, [("out_file", "inputnode.std_t1w_harmonized"),
                                ("metrics", "inputnode.metrics"),
                                ("harmonization", "inputnode.harmonization")]),
        (register_wf, ds_t1w_wf, [("outputnode.transform", "inputnode.t1w2std_xfm")]),
        (ds_t1w_wf, outputnode, [("outputnode.t1w_harmonized", "t1w_harmonized"),
                                 ("outputnode.std_t1w_harmonized", "std_t1w_harmonized"),
                                 ("outputnode.t1w2std_xfm", "t1w2std_xfm")]),
        (harmonize, outputnode, [("metrics", "metrics")]),
    ])
    # fmt: on
    return workflow


def _harmonize_node(*, prior_path, method, params, device, omp_nthreads):
    """The ``harmonize`` node: the prior's method on the reference-grid image."""
    harmonize = pe.Node(
        Harmonize(params=dict(params or {}), device=device, num_threads=omp_nthreads),
        name="harmonize",
        n_procs=omp_nthreads,
        mem_gb=4,
    )
    if method is not None:
        harmonize.inputs.method = method
    if prior_path is not None:
        harmonize.inputs.prior_path = str(prior_path)
    return harmonize


def init_register_wf(*, registration_engine="auto", omp_nthreads=1, name="register_wf"):
    """Affine registration of a T1w image to the prior's reference, as an ITK transform.

    ``simpleitk``: one ``register`` node (:class:`~bids_app.interfaces.registration.
    RegisterAffine`) writing the ITK text transform. ``flirt``: FSL FLIRT (12 degrees of
    freedom) in ``register``, then ``fsl_to_itk`` converts its matrix to ITK text.

    Parameters
    ----------
    registration_engine : str
        ``auto`` (``flirt`` when FSL's ``flirt`` is on the PATH, else ``simpleitk``),
        ``simpleitk`` or ``flirt``.
    omp_nthreads : int
        Threads of the SimpleITK registration (FLIRT runs on one).
    name : str
        Workflow name.

    Inputs
    ------
    moving_image
        The T1w image as loaded (checked and reoriented to RAS).
    reference
        The prior's reference image (the slice grid).

    Outputs
    -------
    transform
        The affine from the T1w to the reference, ITK text.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["moving_image", "reference"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["transform"]), name="outputnode")

    engine = resolve_engine(registration_engine)
    if engine == "flirt":
        from nipype.interfaces import fsl

        register = pe.Node(
            fsl.FLIRT(dof=12, output_type="NIFTI_GZ"), name="register", n_procs=1
        )
        fsl_to_itk = pe.Node(FSLToITK(), name="fsl_to_itk")
        # fmt: off
        workflow.connect([
            (inputnode, register, [("moving_image", "in_file"),
                                   ("reference", "reference")]),
            (register, fsl_to_itk, [("out_matrix_file", "in_matrix")]),
            (inputnode, fsl_to_itk, [("moving_image", "moving"),
                                     ("reference", "reference")]),
            (fsl_to_itk, outputnode, [("out_transform", "transform")]),
        ])
        # fmt: on
        return workflow

    register = pe.Node(
        RegisterAffine(engine=engine, num_threads=omp_nthreads),
        name="register",
        n_procs=omp_nthreads,
        mem_gb=2,
    )
    # fmt: off
    workflow.connect([
        (inputnode, register, [("moving_image", "moving"), ("reference", "fixed")]),
        (register, outputnode, [("out_transform", "transform")]),
    ])
    # fmt: on
    return workflow
