"""Load and check a T1w image."""

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
)


class _LoadT1wInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="a T1w image of the input dataset")


class _LoadT1wOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the checked image, RAS-oriented, float32")


class LoadT1w(SimpleInterface):
    """Read, check and reorient a T1w image (:func:`bids_app.preprocess.image.load_t1w`).

    A bad image raises :class:`bids_app.errors.InputDataError` naming the file.
    """

    input_spec = _LoadT1wInputSpec
    output_spec = _LoadT1wOutputSpec

    def _run_interface(self, runtime):
        from ..preprocess.image import load_t1w

        img = load_t1w(self.inputs.in_file)
        out_file = Path(runtime.cwd) / "t1w_ras.nii.gz"
        img.to_filename(out_file)
        self._results["out_file"] = str(out_file)
        return runtime
