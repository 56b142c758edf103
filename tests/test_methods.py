"""The method registry: one place for the methods, their parameters and their defaults."""

from types import SimpleNamespace

import pytest

from bids_app.harmonize.methods import (DEFAULT_METHOD, METHODS, FlowIntensityParams,
                                        PaperParams, bundle_method, default_record,
                                        get_method, hyperparameters, resolve_params)


def _bundle(record):
    return SimpleNamespace(harmonization=record)


def test_parameters_resolve_defaults_then_the_bundle_then_the_user():
    bundle = _bundle({"method": "paper",
                      "paper": {"beta1": 400.0, "iterations": 7, "validation_bits": [1, 2],
                                "beta1_factors": [0.5, 1.0]}})
    method, params = resolve_params(bundle)  # the bundle's own method
    assert method == "paper" and isinstance(params, PaperParams)
    assert (params.beta1, params.iterations, params.alpha) == (400.0, 7, PaperParams.alpha)
    assert params.beta1_factors == (0.5, 1.0)  # JSON lists come back as the type's tuples
    method, params = resolve_params(bundle, "paper", {"beta1": 300.0, "auto_beta1": True})
    assert (params.beta1, params.auto_beta1, params.iterations) == (300.0, True, 7)
    # another method: its own record and defaults, whatever the bundle's default method is
    method, params = resolve_params(bundle, "flow-intensity")
    assert params == FlowIntensityParams()


def test_a_parameter_of_another_method_is_refused_by_name():
    bundle = _bundle({"flow-intensity": {"gamma_bias": 1.2}})
    with pytest.raises(ValueError, match="beta1: not a parameter of --method flow-intensity"):
        resolve_params(bundle, "flow-intensity", {"beta1": 3.0})
    with pytest.raises(ValueError, match="unknown method 'histogram'"):
        resolve_params(bundle, "histogram")
    with pytest.raises(ValueError, match="unknown intensity model"):
        resolve_params(bundle, "flow-intensity", {"selection": "nyul"})


def test_calibration_records_stay_out_of_the_hyperparameters():
    population = {"levels": [1.0], "threshold": 1.3}
    _, params = resolve_params(_bundle({"flow-intensity": {
        "gamma_bias": 1.21, "population": population, "stripped": None}}), "flow-intensity")
    assert params.population == population and params.gamma_bias == 1.21
    record = hyperparameters(params)
    assert "population" not in record and "stripped" not in record
    assert record["gamma_bias"] == 1.21 and record["selection"] == "auto"
    assert "population" not in get_method("flow-intensity").options
    assert "selection" in get_method("flow-intensity").options


def test_a_new_bundle_records_every_methods_defaults():
    record = default_record()
    assert record["method"] == DEFAULT_METHOD
    assert set(record) == {"method", *METHODS}
    assert record["paper"]["beta1_factors"] == [0.5, 1.0, 2.0]  # JSON-ready
    assert bundle_method(_bundle({})) == DEFAULT_METHOD
    assert bundle_method(_bundle(record)) == DEFAULT_METHOD
    assert bundle_method(_bundle({"method": "paper"})) == "paper"


def test_the_shipped_prior_resolves_for_every_method():
    from bids_app.flow.bundle import load_bundle

    bundle = load_bundle()
    for name in METHODS:
        method, params = resolve_params(bundle, name)
        assert method == name and isinstance(params, METHODS[name].params)
    _, params = resolve_params(bundle, "flow-intensity")
    assert params.population and params.population_brain  # calibrated on its training data
    # paper: the paper's cosine step on the prior's grid, as a new bundle would record it
    from bids_app.harmonize.paper import grid_beta1

    _, paper = resolve_params(bundle, "paper")
    assert paper.beta1 == PaperParams.beta1 == round(grid_beta1(bundle.reference.shape[:2]), 1)
    assert params.gamma_bias == bundle.harmonization["flow-intensity"]["gamma_bias"]
    # calibrated before the span term counted the moving pixels only: kept as it was
    assert "span_pixels" not in bundle.harmonization["flow-intensity"]
    assert params.span_pixels == "all"


def test_a_calibrated_slope_reaches_the_power_candidate():
    """A bundle's ``gamma_slope`` is read (none recorded: 1, as before session 9), and the
    power map the population check weighs is the slope-corrected one."""
    import numpy as np

    from bids_app.harmonize.selection import _candidates

    assert resolve_params(_bundle({}), "flow-intensity")[1].gamma_slope == 1.0
    params = resolve_params(_bundle({"flow-intensity": {"gamma_bias": 1.05,
                                                        "gamma_slope": 1.2}}),
                            "flow-intensity")[1]
    assert params.gamma_slope == 1.2
    info = {"gamma_hat": 1.05 * 1.5 ** 1.2, "in_domain": False}
    candidates, gamma = _candidates(None, None, info, n_knots=5, gamma_bias=params.gamma_bias,
                                    selection="auto", use_prior=True,
                                    gamma_slope=params.gamma_slope)
    assert gamma == pytest.approx(1.5)
    np.testing.assert_allclose(candidates["power"], np.linspace(0, 1, 5) ** 1.5)
    assert "identity" not in candidates
