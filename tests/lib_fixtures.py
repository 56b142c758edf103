"""Library tests' fixtures (a pytest plugin, registered by tests/conftest.py).

Used by tests/test_flow_model.py, test_bundle.py, test_training.py, test_operators.py,
test_paper_algorithm.py, test_intensity.py, test_preprocess.py, test_slices_native.py,
test_evaluation.py and the other tests on the shipped fixture data. Fixture names are
prefixed ``lib_``.

:func:`needs_shared_data` marks a test that reads the data beside the repository
(``../shared/<path>``) and skips it when that data is absent, so that the suite passes on
a fresh clone (as nibabel's ``needs_nibabel_data``).
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # 2 cores shared with a training job: keep tests lean

LIB_FIXTURE_DIR = Path(__file__).parent / "data" / "ixi-hh-mini"

#: The folder beside the repository that holds the large data sets (not in a clone).
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def needs_shared_data(path):
    """Decorator: the test reads ``../shared/<path>``; skipped, with the reason, without it.

    Applies the ``shared_data`` marker too (``-m "not shared_data"`` deselects such tests).
    Usage: ``@needs_shared_data("data/ixi-hh")`` on a test function or class.
    """
    where = SHARED_DIR / path
    skip = pytest.mark.skipif(
        not where.exists(),
        reason=f"needs ../shared/{path} beside the repository ({where} not found)",
    )

    def decorate(test):
        return pytest.mark.shared_data(skip(test))

    return decorate


@pytest.fixture(scope="session")
def lib_bids_dir():
    """The shipped 3-subject IXI-HH BIDS fixture (2 mm)."""
    return LIB_FIXTURE_DIR


@pytest.fixture(scope="session")
def lib_t1w_path():
    """One fixture T1w image (sub-IXI052)."""
    return LIB_FIXTURE_DIR / "sub-IXI052" / "anat" / "sub-IXI052_T1w.nii.gz"


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
