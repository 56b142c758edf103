"""benchmarks/domain.py: the skull-stripped part alone (``--no-flags``) still reports."""

import argparse

import pytest
from lib_fixtures import lib_load_benchmark


@pytest.fixture(scope="module")
def bench():
    return lib_load_benchmark("domain")


def test_options_of_a_stripped_only_run(bench):
    opts = bench.get_parser().parse_args(
        ["--split", "validation", "--no-flags", "--shifts", "identity", "exp@signal"])
    assert opts.split == "validation" and opts.no_flags
    assert opts.shifts == ["identity", "exp@signal"]
    assert "bias+gamma0.8" in bench.get_parser().parse_args([]).shifts


def test_report_without_the_flag_part(bench):
    """A ``--no-flags`` run has no flag records: the report says so and still tabulates the
    stripped rows per shift (it crashed on the empty flag table before)."""
    rows = [{"subject": s, "shift": shift, "detected": True, "selected": sel, "flagged": False,
             "source": 30.0, "whole_head": whole, "stripped": cut}
            for s, sel, whole, cut in (("IXI001", "power", 42.0, 40.0),
                                       ("IXI002", "identity", 40.0, 31.0))
            for shift in ("exp@signal",)]
    text = bench.write_markdown([], rows, 12.0,
                                argparse.Namespace(threads=1, split="validation"))
    assert "2 IXI-HH validation subjects" in text
    assert "Not run (`--no-flags`)." in text
    line = next(x for x in text.splitlines() if x.startswith("| exp@signal"))
    assert "| 41.0 | 35.5 | -5.5 (worst -9.0) | 2 of 2 | identity 1, power 1 |" in line


def test_population_candidates_on_a_fixture_subject(bench, lib_t1w_path):
    """On a registered fixture image under Gamma 0.7 the population's own maps undo most of
    the shift in the brain, whole head and stripped, and the identity is the farthest from
    the population; unshifted, the identity is exact."""
    import nibabel as nb
    import numpy as np
    from scipy.ndimage import binary_dilation

    from bids_app.evaluation.shifts import apply_shift
    from bids_app.flow.bundle import load_bundle
    from bids_app.preprocess.masks import template_brain_mask
    from bids_app.preprocess.registration import register_to_reference, resample_to_grid

    bundle = load_bundle(None)
    native = nb.as_closest_canonical(nb.load(str(lib_t1w_path)))
    matrix, _ = register_to_reference(native, bundle.reference, num_threads=1)
    volume = np.asarray(resample_to_grid(native, bundle.reference, matrix), np.float64)
    brain = template_brain_mask()
    loose = binary_dilation(brain, iterations=1)
    truth = apply_shift(volume, "identity")
    u = apply_shift(volume, "gamma0.7")
    for kind, image in (("whole", u), ("stripped", u * loose)):
        got = bench.population_candidates(image, truth, bundle, brain, kind)
        assert set(got) == {"identity", "power", "quantile"}
        assert got["identity"][1] > max(got["power"][1], got["quantile"][1])
        assert min(got["power"][0], got["quantile"][0]) > got["identity"][0] + 5.0
    same = bench.population_candidates(truth, truth, bundle, brain, "whole")
    assert same["identity"][0] >= 99.0
