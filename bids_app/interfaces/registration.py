"""Affine registration of a T1w image to the prior's reference."""

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _RegisterAffineInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="the T1w image (native space)")
    fixed = File(exists=True, mandatory=True, desc="the reference image")
    engine = traits.Enum(
        "simpleitk", usedefault=True, desc="registration tool (FLIRT runs as its own node)"
    )
    num_threads = traits.Int(1, usedefault=True, desc="threads")


class _RegisterAffineOutputSpec(TraitedSpec):
    out_transform = File(exists=True, desc="ITK text affine: reference -> T1w points")


class _RegisterAffineOutputSpecStripped(_RegisterAffineOutputSpec):
    skull_stripped = traits.Bool(desc="the image was found skull-stripped (and registered "
                                      "again to the template's brain)")


class RegisterAffine(SimpleInterface):
    """Affine registration (:func:`bids_app.preprocess.registration.register_to_reference`)."""

    input_spec = _RegisterAffineInputSpec
    output_spec = _RegisterAffineOutputSpecStripped

    def _run_interface(self, runtime):
        import nibabel as nib

        from ..preprocess.registration import register_to_reference, write_itk_affine

        matrix, stripped = register_to_reference(
            nib.load(self.inputs.moving),
            nib.load(self.inputs.fixed),
            engine=self.inputs.engine,
            num_threads=self.inputs.num_threads,
        )
        out_file = Path(runtime.cwd) / "t1w2ref_xfm.txt"
        write_itk_affine(matrix, out_file)
        self._results["out_transform"] = str(out_file)
        self._results["skull_stripped"] = stripped
        return runtime


class _FSLToITKInputSpec(BaseInterfaceInputSpec):
    in_matrix = File(exists=True, mandatory=True, desc="FLIRT .mat (moving -> reference)")
    moving = File(exists=True, mandatory=True, desc="FLIRT's -in image")
    reference = File(exists=True, mandatory=True, desc="FLIRT's -ref image")


class FSLToITK(SimpleInterface):
    """Convert a FLIRT matrix to our ITK affine.

    Calls :func:`bids_app.preprocess.registration.fsl_to_ras`.
    """

    input_spec = _FSLToITKInputSpec
    output_spec = _RegisterAffineOutputSpec

    def _run_interface(self, runtime):
        from ..preprocess.registration import fsl_to_ras, write_itk_affine

        matrix = fsl_to_ras(self.inputs.in_matrix, self.inputs.moving, self.inputs.reference)
        out_file = Path(runtime.cwd) / "t1w2ref_xfm.txt"
        write_itk_affine(matrix, out_file)
        self._results["out_transform"] = str(out_file)
        return runtime
