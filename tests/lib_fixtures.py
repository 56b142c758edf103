"""Library tests' fixtures (a pytest plugin, registered by tests/conftest.py).

Used by tests/test_flow_model.py, test_bundle.py, test_training.py, test_operators.py,
test_paper_algorithm.py, test_intensity.py, test_preprocess.py, test_slices_native.py,
test_evaluation.py and the other tests on the shipped fixture data. Fixture names are
prefixed ``lib_``. Every test runs on data inside the repository (tests/data); the large
data sets beside it (``../shared``) serve the benchmarks only, so the suite passes on a
fresh clone.
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # 2 cores shared with a training job: keep tests lean

LIB_FIXTURE_DIR = Path(__file__).parent / "data" / "ixi-hh-mini"


def lib_load_benchmark(name):
    """The module of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bh_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lib_bids_dir():
    """The shipped 3-subject IXI-HH BIDS fixture (2 mm)."""
    return LIB_FIXTURE_DIR


@pytest.fixture(scope="session")
def lib_t1w_path():
    """One fixture T1w image (sub-IXI052)."""
    return LIB_FIXTURE_DIR / "sub-IXI052" / "anat" / "sub-IXI052_T1w.nii.gz"


@pytest.fixture(scope="session")
def lib_shipped_bundle():
    """The prior bundle shipped with the package."""
    from bids_app.flow.bundle import load_bundle

    return load_bundle()


@pytest.fixture(scope="session")
def lib_reference_volume(lib_shipped_bundle, lib_t1w_path):
    """IXI052 registered and resampled onto the shipped prior's reference grid."""
    import nibabel as nb
    import numpy as np

    from bids_app.preprocess.registration import register_affine, resample_to_grid

    reference = lib_shipped_bundle.reference
    img = nb.as_closest_canonical(nb.load(str(lib_t1w_path)))
    matrix = register_affine(img, reference, num_threads=1)
    return np.asarray(resample_to_grid(img, reference, matrix), dtype=np.float32)


def lib_make_flow(shape=(16, 16), *, preset="tiny", seed=0, dtype=None, **overrides):
    """A small SliceFlow with ActNorm initialized (one train-mode forward), in eval mode."""
    from bids_app.flow.model import SliceFlow, flow_config

    torch.manual_seed(seed)
    flow = SliceFlow(flow_config(preset, shape=shape, **overrides))
    if dtype is not None:
        flow = flow.to(dtype)
    dtype = next(flow.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    data = torch.rand(8, 1, *shape, generator=generator).to(dtype)
    flow.train()
    with torch.no_grad():
        flow(data)
    return flow.eval()


@pytest.fixture
def lib_flow_factory():
    """Build small initialized flows: ``lib_flow_factory(shape, preset=..., dtype=...)``."""
    return lib_make_flow
