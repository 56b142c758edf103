"""Resampling to the reference grid, harmonization and the way back to native space."""

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..harmonize.methods import METHODS


def _plain(value):
    """JSON-friendly copy of a metrics value (numpy scalars and arrays to Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class _ResampleToGridInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the T1w image (native space)")
    reference = File(exists=True, mandatory=True, desc="the grid to resample onto")
    transform = File(exists=True, mandatory=True, desc="ITK affine: reference -> T1w points")


class _ResampleToGridOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the T1w image on the reference grid")


class ResampleToGrid(SimpleInterface):
    """Resample onto the reference grid.

    Calls :func:`bids_app.preprocess.registration.resample_to_grid`.
    """

    input_spec = _ResampleToGridInputSpec
    output_spec = _ResampleToGridOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..preprocess.registration import read_itk_affine, resample_to_grid

        grid = nib.load(self.inputs.reference)
        data = resample_to_grid(
            nib.load(self.inputs.in_file), grid, read_itk_affine(self.inputs.transform)
        )
        out_file = Path(runtime.cwd) / "t1w_ref.nii.gz"
        nib.Nifti1Image(np.asarray(data, dtype="float32"), grid.affine).to_filename(out_file)
        self._results["out_file"] = str(out_file)
        return runtime


def _log_evidence(path, metrics):
    """Say in the run's log what was detected about the input and why it was flagged."""
    import logging

    logger = logging.getLogger("nipype.interface")
    if metrics.get("SkullStripped"):
        logger.info("%s: skull-stripped input (%.0f %% of the template's scalp and skull "
                    "hold signal): harmonized within the template's brain", path,
                    100 * (metrics.get("ShellFraction") or 0.0))
    for reason in metrics.get("OutOfDomainReasons") or []:
        logger.warning("%s: out of the prior's domain: %s", path, reason)


def sidecar_key(name):
    """``scoring_slices`` -> ``ScoringSlices`` (sidecar keys are CamelCase in BIDS)."""
    special = {"lr": "LearningRate", "map": "IntensityMap"}
    return special.get(name) or "".join(p[:1].upper() + p[1:] for p in name.split("_"))


class _HarmonizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the T1w image on the reference grid")
    prior_path = File(exists=True, desc="prior bundle (default: the shipped prior)")
    method = traits.Enum(*METHODS, desc="harmonization method (default: the prior's own)")
    params = traits.Dict(desc="the method's parameters given by the user (typed; the others "
                         "come from the prior's record)")
    device = traits.Str("cpu", usedefault=True, desc="torch device")
    num_threads = traits.Int(1, usedefault=True, desc="torch threads")


class _HarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the harmonized image on the reference grid")
    out_map = File(exists=True, desc="per-slice intensity maps (npz: lut, low, high, valid)")
    metrics = traits.Dict(desc="quality metrics and run time")
    harmonization = traits.Dict(desc="method, device and the hyperparameters used")


class Harmonize(SimpleInterface):
    """Harmonize a reference-space volume (:func:`bids_app.harmonize.volume.harmonize_volume`)."""

    input_spec = _HarmonizeInputSpec
    output_spec = _HarmonizeOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np
        import torch

        from ..flow.bundle import load_bundle
        from ..harmonize.volume import harmonize_volume

        torch.set_num_threads(self.inputs.num_threads)
        path = self.inputs.prior_path if isdefined(self.inputs.prior_path) else None
        bundle = load_bundle(path, device=self.inputs.device)
        img = nib.load(self.inputs.in_file)
        harmonized, result = harmonize_volume(
            np.asanyarray(img.dataobj, dtype="float32"),
            bundle,
            method=self.inputs.method if isdefined(self.inputs.method) else None,
            params=self.inputs.params if isdefined(self.inputs.params) else None,
            device=self.inputs.device,
            progress=False,
        )
        out_file = Path(runtime.cwd) / "t1w_ref_harmonized.nii.gz"
        nib.Nifti1Image(np.asarray(harmonized, dtype="float32"), img.affine).to_filename(
            out_file
        )
        out_map = Path(runtime.cwd) / "intensity_maps.npz"
        arrays = {k: np.asarray(result[k]) for k in ("lut", "low", "high", "valid")}
        if result.get("global_map") is not None:
            arrays["map_values"] = np.asarray(result["global_map"]["values"])
            arrays["map_scale"] = np.asarray(result["global_map"]["scale"])
            # the smooth field divided out, if any: one field_<key> array per entry
            arrays.update({f"field_{k}": np.asarray(v)
                           for k, v in (result["global_map"].get("field") or {}).items()})
        np.savez(out_map, **arrays)
        _log_evidence(self.inputs.in_file, result["metrics"])
        record = {"Method": result["method"], "Device": self.inputs.device}
        record.update({sidecar_key(k): _plain(v) for k, v in result["params"].items()})
        if result["decision"]:
            record["Decision"] = {sidecar_key(k): _plain(v)
                                  for k, v in result["decision"].items()}
        self._results.update(
            out_file=str(out_file),
            out_map=str(out_map),
            metrics=_plain(dict(result["metrics"])),
            harmonization=record,
        )
        return runtime


class _ToNativeInputSpec(BaseInterfaceInputSpec):
    native_file = File(exists=True, mandatory=True, desc="the T1w image (native space, RAS)")
    source_file = File(exists=True, desc="the original T1w: the output takes its orientation")
    in_map = File(exists=True, mandatory=True, desc="per-slice intensity maps (npz)")
    transform = File(exists=True, mandatory=True, desc="ITK affine: reference -> T1w points")
    reference = File(exists=True, mandatory=True, desc="the reference grid")


class _ToNativeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the harmonized image on the native grid")


class ToNative(SimpleInterface):
    """Carry the harmonization back to native space.

    Calls :func:`bids_app.preprocess.native.to_native`.
    """

    input_spec = _ToNativeInputSpec
    output_spec = _ToNativeOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..preprocess.image import reorient_like
        from ..preprocess.native import to_native
        from ..preprocess.registration import read_itk_affine

        maps = np.load(self.inputs.in_map)
        global_map = None
        if "map_values" in maps:
            global_map = {"values": maps["map_values"], "scale": float(maps["map_scale"])}
            field = {k[len("field_"):]: maps[k].tolist() for k in maps.files
                     if k.startswith("field_")}
            if field:
                global_map["field"] = field
        img = to_native(
            nib.load(self.inputs.native_file),
            maps["lut"],
            maps["low"],
            maps["high"],
            maps["valid"],
            read_itk_affine(self.inputs.transform),
            nib.load(self.inputs.reference).affine,
            global_map,
        )
        if isdefined(self.inputs.source_file):
            img = reorient_like(img, nib.load(self.inputs.source_file))
        out_file = Path(runtime.cwd) / "t1w_harmonized.nii.gz"
        img.to_filename(out_file)
        self._results["out_file"] = str(out_file)
        return runtime
