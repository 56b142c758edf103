"""Datasinks writing the BIDS-Derivatives outputs of BlindHarmony."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink
from ..interfaces.reports import SubjectReport
from ..utils.derivatives import resolution_label


def init_ds_t1w_wf(
    *,
    bids_dir,
    output_dir,
    space,
    resolution,
    prior=None,
    name="ds_t1w_wf",
):
    """Write the harmonized T1w images and the transform of one input T1w.

    Outputs, named after the source T1w (``sub-X[_ses-Y][_acq-..][_rec-..][_run-..]``)::

        <source>_desc-harmonized_T1w.nii.gz                       (+ .json)
        <source>_space-<space>_res-<res>_desc-harmonized_T1w.nii.gz (+ .json)
        <source>_from-T1w_to-<space>_mode-image_xfm.txt

    Parameters
    ----------
    bids_dir : str
        The input BIDS dataset (for ``Sources``).
    output_dir : str
        Root of the output dataset.
    space : str
        Name of the prior's reference space (e.g. ``MNIColin27``).
    resolution : float
        Voxel size of the prior's slice grid (mm); gives the ``res-`` label.
    prior : dict
        ``{"Name", "Version", "SHA256"}`` recorded in the sidecars.
    name : str
        Workflow name.

    Inputs
    ------
    source_file
        The raw T1w image.
    t1w_harmonized
        The harmonized image, native grid.
    std_t1w_harmonized
        The harmonized image, reference grid.
    t1w2std_xfm
        The affine from the T1w to the reference (ITK text).
    metrics
        Quality metrics of the harmonization (dict).
    harmonization
        Method, device and hyperparameters used (dict).

    Outputs
    -------
    t1w_harmonized, std_t1w_harmonized, t1w2std_xfm
        Paths of the written derivatives.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "source_file", "t1w_harmonized", "std_t1w_harmonized", "t1w2std_xfm", "metrics",
        "harmonization"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["t1w_harmonized", "std_t1w_harmonized", "t1w2std_xfm"]), name="outputnode")
    common = {"base_directory": str(output_dir), "bids_dir": str(bids_dir)}
    described = {"prior": dict(prior or {}), **common}

    # the native image comes last: no derivative is written before it exists
    ds_t1w2std_xfm = _add_ds_t1w2std_xfm(workflow, inputnode, outputnode, space=space,
                                         common=common)
    _add_ds_std_t1w(workflow, inputnode, outputnode, ds_t1w2std_xfm, space=space,
                    resolution=resolution, described=described)
    _add_ds_t1w(workflow, inputnode, outputnode, described=described)
    return workflow


def _add_ds_t1w2std_xfm(workflow, inputnode, outputnode, *, space, common):
    """Add ``ds_t1w2std_xfm`` (the T1w-to-reference transform, no sidecar); return it."""
    ds_t1w2std_xfm = pe.Node(
        DerivativesDataSink(
            suffix="xfm",
            extension=".txt",
            entities={"from_": "T1w", "to": space, "mode": "image"},
            sidecar=False,
            **common,
        ),
        name="ds_t1w2std_xfm",
        run_without_submitting=True,
    )
    # fmt: off
    workflow.connect([
        (inputnode, ds_t1w2std_xfm, [("source_file", "source_file"),
                                     ("t1w2std_xfm", "in_file"),
                                     ("t1w_harmonized", "wait_for")]),
        (ds_t1w2std_xfm, outputnode, [("out_file", "t1w2std_xfm")]),
    ])
    # fmt: on
    return ds_t1w2std_xfm


def _add_ds_std_t1w(workflow, inputnode, outputnode, ds_t1w2std_xfm, *, space, resolution,
                    described):
    """Add ``ds_std_t1w`` (the harmonized image on the reference grid, its sidecar naming
    the transform among its sources)."""
    ds_std_t1w = pe.Node(
        DerivativesDataSink(
            suffix="T1w",
            entities={"space": space, "res": resolution_label(resolution),
                      "desc": "harmonized"},
            resolution=float(resolution),
            **described,
        ),
        name="ds_std_t1w",
        run_without_submitting=True,
    )
    # fmt: off
    workflow.connect([
        (inputnode, ds_std_t1w, [("source_file", "source_file"),
                                 ("std_t1w_harmonized", "in_file"),
                                 ("metrics", "metrics"),
                                 ("harmonization", "harmonization"),
                                 ("t1w_harmonized", "wait_for")]),
        (ds_t1w2std_xfm, ds_std_t1w, [("out_file", "sources")]),
        (ds_std_t1w, outputnode, [("out_file", "std_t1w_harmonized")]),
    ])
    # fmt: on


def _add_ds_t1w(workflow, inputnode, outputnode, *, described):
    """Add ``ds_t1w`` (the harmonized image on the native grid and its sidecar)."""
    ds_t1w = pe.Node(
        DerivativesDataSink(suffix="T1w", entities={"desc": "harmonized"}, **described),
        name="ds_t1w",
        run_without_submitting=True,
    )
    # fmt: off
    workflow.connect([
        (inputnode, ds_t1w, [("source_file", "source_file"),
                             ("t1w_harmonized", "in_file"),
                             ("metrics", "metrics"),
                             ("harmonization", "harmonization")]),
        (ds_t1w, outputnode, [("out_file", "t1w_harmonized")]),
    ])
    # fmt: on


def init_ds_report_wf(*, subject_id, bids_dir, output_dir, name="ds_report_wf"):
    """Write the participant's HTML report once all its T1w images are harmonized.

    Outputs ``sub-<label>.html`` at the root of the output dataset and its figures in
    ``sub-<label>/figures/`` (:mod:`bids_app.reports.participant`).

    Parameters
    ----------
    subject_id : str
        Participant label (without ``sub-``).
    bids_dir : str
        The input BIDS dataset (source images for the before/after mosaics).
    output_dir : str
        Root of the output dataset.
    name : str
        Workflow name.

    Inputs
    ------
    t1w_harmonized
        The participant's written native-space harmonized images (list): the report
        waits for them.

    Outputs
    -------
    out_report
        Path of the HTML report.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_harmonized"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_report"]), name="outputnode")

    ds_report = pe.Node(
        SubjectReport(output_dir=str(output_dir), bids_dir=str(bids_dir),
                      subject_id=subject_id),
        name="ds_report",
        run_without_submitting=True,
    )
    # fmt: off
    workflow.connect([
        (inputnode, ds_report, [("t1w_harmonized", "wait_for")]),
        (ds_report, outputnode, [("out_report", "out_report")]),
    ])
    # fmt: on
    return workflow
