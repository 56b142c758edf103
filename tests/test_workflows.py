"""Workflow graphs, built (never run) on a BIDS skeleton."""

import pytest

from bids_app.cli.parser import parse_args
from bids_app.cli.workflow import PriorInfo, build_workflow
from bids_app.workflows.base import (
    init_blindharmony_wf,
    init_t1w_harmonize_wf,
    resolve_engine,
    t1w_wf_name,
)

PRIOR = PriorInfo(path=None, name="fake", sha256="0" * 64, space="MNIColin27", resolution=2.0,
                  version="0.1.0")


def _build(skeleton_files, tmp_path, **kwargs):
    return init_blindharmony_wf(
        subject_files=skeleton_files,
        bids_dir=str(tmp_path / "bids"),
        output_dir=str(tmp_path / "out"),
        work_dir=str(tmp_path / "work"),
        prior_path=None,
        space="MNIColin27",
        resolution=2.0,
        prior=PRIOR.record(),
        **kwargs,
    )


def _node_names(workflow):
    graph = workflow._create_flat_graph()
    return {node.fullname for node in graph.nodes()}


@pytest.mark.parametrize(
    "path,name",
    [
        ("sub-01/anat/sub-01_T1w.nii.gz", "t1w_wf"),
        ("sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz", "t1w_ses_1_run_2_wf"),
        ("sub-01/ses-a/anat/sub-01_ses-a_acq-fast_rec-norm_run-01_T1w.nii",
         "t1w_ses_a_acq_fast_rec_norm_run_01_wf"),
    ],
)
def test_t1w_wf_name(path, name):
    assert t1w_wf_name("/data/" + path) == name


def test_each_t1w_gets_its_own_workflow(skeleton_files, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    names = _node_names(_build(skeleton_files, tmp_path))
    prefix = "blindharmony_wf."
    # one reference per participant: no node folder is shared between participants
    assert prefix + "prior_reference" not in names
    for subject in ("01", "02"):
        assert f"{prefix}single_subject_{subject}_wf.prior_reference" in names
    per_t1w = {
        "single_subject_01_wf.t1w_ses_1_run_1_wf",
        "single_subject_01_wf.t1w_ses_1_run_2_wf",
        "single_subject_01_wf.t1w_ses_2_acq_fast_wf",
        "single_subject_02_wf.t1w_ses_1_wf",
    }
    for wf in per_t1w:
        for node in ("load_t1w", "register_wf.register", "to_reference", "harmonize", "to_native",
                     "ds_t1w_wf.ds_t1w", "ds_t1w_wf.ds_std_t1w", "ds_t1w_wf.ds_t1w2std_xfm"):
            assert f"{prefix}{wf}.{node}" in names
    # 8 per T1w + 3 per subject (prior_reference, merge_t1w, ds_report_wf.ds_report),
    # besides the inputnode/outputnode identities
    working = {n for n in names if not n.endswith(("inputnode", "outputnode"))}
    assert len(working) == 8 * len(per_t1w) + 3 * 2


def test_inputs_are_set_per_t1w(skeleton_files, tmp_path):
    workflow = _build(skeleton_files, tmp_path)
    sub_wf = workflow.get_node("single_subject_01_wf")
    t1w_wf = sub_wf.get_node("t1w_ses_1_run_2_wf")
    assert t1w_wf.inputs.inputnode.t1w_file.endswith("sub-01_ses-1_run-2_T1w.nii.gz")


def test_flirt_engine(skeleton_files, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/flirt" if name == "flirt" else None)
    assert resolve_engine("auto") == "flirt"
    workflow = init_t1w_harmonize_wf(
        bids_dir=str(tmp_path), output_dir=str(tmp_path / "out"), prior_path=None,
        space="MNIColin27", resolution=2.0, registration_engine="auto", name="t1w_wf",
    )
    names = {n.fullname for n in workflow._create_flat_graph().nodes()}
    assert {"t1w_wf.register_wf.register", "t1w_wf.register_wf.fsl_to_itk"} <= names
    assert type(workflow.get_node("register_wf.register").interface).__name__ == "FLIRT"


def test_simpleitk_engine(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/flirt")
    workflow = init_t1w_harmonize_wf(
        bids_dir=str(tmp_path), output_dir=str(tmp_path / "out"), prior_path=None,
        space="MNIColin27", resolution=2.0, registration_engine="simpleitk",
        omp_nthreads=3, name="t1w_wf",
    )
    register = workflow.get_node("register_wf.register")
    assert type(register.interface).__name__ == "RegisterAffine"
    assert register.interface.inputs.num_threads == 3 and register.n_procs == 3
    assert workflow.get_node("register_wf.fsl_to_itk") is None


def test_build_workflow_from_cli(bids_skeleton, skeleton_files, tmp_path):
    prior = tmp_path / "prior.pt"
    prior.write_bytes(b"fake")
    opts = parse_args([str(bids_skeleton), str(tmp_path / "out"), "participant",
                       "-w", str(tmp_path / "work"), "--method", "paper", "--alpha", "0.5",
                       "--beta1", "auto", "--prior", str(prior),
                       "--registration-engine", "simpleitk"])
    info = PriorInfo(**{**PRIOR.__dict__, "path": str(prior)})
    workflow = build_workflow(opts, skeleton_files, prior=info, device="cpu")
    assert workflow.name == "blindharmony_wf" and workflow.base_dir == str(tmp_path / "work")
    harmonize = workflow.get_node("single_subject_02_wf").get_node("t1w_ses_1_wf") \
        .get_node("harmonize")
    assert harmonize.inputs.params == {"alpha": 0.5, "auto_beta1": True}
    assert harmonize.inputs.method == "paper" and harmonize.inputs.prior_path == str(prior)
    for subject in ("01", "02"):
        reference = workflow.get_node(f"single_subject_{subject}_wf").get_node("prior_reference")
        assert reference.inputs.prior_path == str(prior)


def test_the_priors_recorded_method_is_the_default(bids_skeleton, skeleton_files, tmp_path):
    base = [str(bids_skeleton), str(tmp_path / "out"), "participant", "-w",
            str(tmp_path / "work"), "--beta1", "auto"]
    paper_prior = PriorInfo(**{**PRIOR.__dict__, "method": "paper"})
    for argv, prior, method, params in (
            (base, paper_prior, "paper", {"auto_beta1": True}),
            (base, PRIOR, "flow-intensity", {}),
            (base + ["--method", "flow-intensity"], paper_prior, "flow-intensity", {})):
        workflow = build_workflow(parse_args(argv), skeleton_files, prior=prior, device="cpu")
        harmonize = workflow.get_node("single_subject_02_wf").get_node("t1w_ses_1_wf") \
            .get_node("harmonize")
        assert harmonize.inputs.method == method and harmonize.inputs.params == params


def test_hyperparameters_ignored_for_flow_intensity(bids_skeleton, tmp_path, caplog):
    from bids_app.cli.workflow import cli_overrides

    opts = parse_args([str(bids_skeleton), str(tmp_path / "out"), "participant",
                       "-w", str(tmp_path / "work"), "--beta1", "3"])
    assert cli_overrides(opts, "flow-intensity") == {}
    assert "--beta1" in caplog.text


def test_intensity_model_belongs_to_flow_intensity(bids_skeleton, tmp_path, caplog):
    from bids_app.cli.workflow import cli_overrides

    base = [str(bids_skeleton), str(tmp_path / "out"), "participant", "-w",
            str(tmp_path / "work"), "--intensity-model", "quantile", "--beta1", "3",
            "--bias-field", "off"]
    assert cli_overrides(parse_args(base), "flow-intensity") == {"selection": "quantile",
                                                                 "bias_field": "off"}
    assert "--beta1 ignored with --method flow-intensity" in caplog.text
    caplog.clear()
    assert cli_overrides(parse_args(base + ["--method", "paper"]), "paper") == {
        "beta1": 3.0, "auto_beta1": False}
    assert "--bias-field, --intensity-model ignored with --method paper" in caplog.text


def test_write_graph(skeleton_files, tmp_path):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed")
    workflow = _build(skeleton_files, tmp_path)
    workflow.write_graph(graph2use="flat", format="svg")
    assert (tmp_path / "work" / "blindharmony_wf").exists()
