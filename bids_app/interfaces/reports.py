"""Reports: a thin nipype wrapper of :mod:`bids_app.reports.participant`."""

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="root of the output dataset")
    bids_dir = Directory(exists=True, mandatory=True, desc="the input BIDS dataset")
    subject_id = traits.Str(mandatory=True, desc="participant label (without sub-)")
    wait_for = traits.Any(
        desc="ignored; connect the subject's last derivatives so that the report is "
        "written once they all exist"
    )


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="the subject's HTML report")


class SubjectReport(SimpleInterface):
    """Write ``sub-<label>.html`` and ``sub-<label>/figures/`` in the output dataset.

    Calls :func:`bids_app.reports.participant.write_participant_report`, which reads the
    subject's harmonized images from the output dataset. Always runs (never cached).
    """

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from ..reports.participant import write_participant_report

        out_report = write_participant_report(
            self.inputs.output_dir, self.inputs.bids_dir, self.inputs.subject_id
        )
        self._results["out_report"] = str(out_report)
        return runtime
