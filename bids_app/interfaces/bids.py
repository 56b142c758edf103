"""Write BIDS-Derivatives files: a thin nipype wrapper of :mod:`bids_app.utils.derivatives`."""

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the output dataset")
    bids_dir = Directory(exists=True, mandatory=True, desc="the input BIDS dataset")
    source_file = File(exists=True, mandatory=True, desc="the raw T1w the file derives from")
    in_file = File(exists=True, mandatory=True, desc="the file to write")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix (T1w, xfm)")
    extension = traits.Str(".nii.gz", usedefault=True, desc="file extension")
    entities = traits.Dict(desc="more entities: desc, space, res, from_, to, mode")
    sidecar = traits.Bool(True, usedefault=True, desc="write a JSON sidecar")
    resolution = traits.Float(desc="voxel size (mm) documented for the res- entity")
    prior = traits.Dict(desc="Name, Version, SHA256 of the prior")
    harmonization = traits.Dict(desc="method and hyperparameters")
    metrics = traits.Dict(desc="quality metrics")
    wait_for = traits.Any(
        desc="ignored; connect the last output of a pipeline so that no derivative is "
        "written before all of them can be"
    )
    sources = InputMultiObject(
        File(exists=True), desc="derivatives this file also derives from (e.g. transforms)"
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the written file")
    out_meta = File(desc="its JSON sidecar")


class DerivativesDataSink(SimpleInterface):
    """Name a derivative after its source, write it and its sidecar atomically.

    Always runs (never cached), so a re-run rewrites outputs that were removed.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from ..utils.derivatives import save_derivative

        def get(name):
            value = getattr(self.inputs, name)
            return value if isdefined(value) else None

        out_file, out_meta = save_derivative(
            self.inputs.in_file,
            output_dir=self.inputs.base_directory,
            bids_dir=self.inputs.bids_dir,
            source_file=self.inputs.source_file,
            suffix=self.inputs.suffix,
            extension=self.inputs.extension,
            entities=get("entities") or {},
            sidecar=self.inputs.sidecar,
            resolution=get("resolution"),
            prior=get("prior"),
            harmonization=get("harmonization"),
            metrics=get("metrics"),
            sources=get("sources") or [],
        )
        self._results["out_file"] = str(out_file)
        if out_meta is not None:
            self._results["out_meta"] = str(out_meta)
        return runtime
