"""Information read from a prior bundle."""

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _PriorReferenceInputSpec(BaseInterfaceInputSpec):
    prior_path = File(exists=True, desc="prior bundle (default: the shipped prior)")


class _PriorReferenceOutputSpec(TraitedSpec):
    reference = File(exists=True, desc="the prior's reference template on its slice grid")
    space = traits.Str(desc="name of the reference space, e.g. MNIColin27")
    resolution = traits.Float(desc="voxel size of the slice grid (mm)")


class PriorReference(SimpleInterface):
    """Write the reference image of a prior bundle (:func:`bids_app.flow.bundle.load_bundle`)."""

    input_spec = _PriorReferenceInputSpec
    output_spec = _PriorReferenceOutputSpec

    def _run_interface(self, runtime):
        from ..flow.bundle import load_bundle

        path = self.inputs.prior_path if isdefined(self.inputs.prior_path) else None
        bundle = load_bundle(path, device="cpu")
        out_file = Path(runtime.cwd) / "reference.nii.gz"
        bundle.reference.to_filename(out_file)
        self._results.update(
            reference=str(out_file),
            space=str(bundle.space),
            resolution=float(bundle.resolution),
        )
        return runtime
