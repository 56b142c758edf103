"""Prior bundle: save/load round trip and clear errors for bad files."""

import hashlib

import nibabel as nb
import numpy as np
import pytest
import torch

from bids_app.errors import EX_DATAERR, EX_NOINPUT, MissingInputError, PriorError
from bids_app.flow.bundle import FORMAT_VERSION, PriorBundle, load_bundle, read_payload

SHAPE = (16, 16)
NZ = 6


@pytest.fixture
def bundle(lib_flow_factory):
    flow = lib_flow_factory(SHAPE, seed=4)
    rng = np.random.default_rng(0)
    affine = np.array(
        [[2.0, 0, 0, -15.0], [0, 2.0, 0, -17.5], [0, 0, 2.5, -7.0], [0, 0, 0, 1]]
    )
    template = (rng.random((*SHAPE, NZ)) * 900).astype(np.float32)
    return PriorBundle(
        flow=flow,
        reference=nb.Nifti1Image(template, affine),
        space="MNIColin27",
        x0=torch.from_numpy(rng.random((NZ, 1, *SHAPE)).astype(np.float32)),
        name="unit-test-prior",
        preprocessing={"normalization": "slice-minmax"},
        training={"steps": 12, "history": [{"step": 6, "val_bits_per_dim": 7.5}]},
        metrics={"val_bits_per_dim": 7.25, "best_step": 6},
        harmonization={"method": "paper", "paper": {"beta1": 10.0}},
    )


@pytest.fixture
def saved(bundle, tmp_path):
    path = tmp_path / "sub" / "prior.pt"
    assert bundle.save(path) == path
    return path


def test_round_trip(bundle, saved):
    loaded = load_bundle(saved)
    assert not loaded.flow.training
    x = torch.rand(3, 1, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z_a, ld_a = bundle.flow.eval()(x)
        z_b, ld_b = loaded.flow(x)
    torch.testing.assert_close(z_b, z_a)
    torch.testing.assert_close(ld_b, ld_a)
    assert loaded.flow.config == bundle.flow.config
    # x0 and the template are stored as float16
    assert loaded.x0.dtype == torch.float32
    assert loaded.x0.shape == (NZ, 1, *SHAPE)
    torch.testing.assert_close(loaded.x0, bundle.x0, atol=1e-3, rtol=1e-3)
    np.testing.assert_array_equal(loaded.reference.affine, bundle.reference.affine)
    ref_a = np.asanyarray(bundle.reference.dataobj)
    ref_b = np.asanyarray(loaded.reference.dataobj)
    assert ref_b.shape == ref_a.shape
    np.testing.assert_allclose(ref_b, ref_a, rtol=1e-3, atol=1e-3)
    assert loaded.space == "MNIColin27"
    assert loaded.resolution == 2.0
    assert loaded.name == "unit-test-prior"
    assert loaded.metrics == bundle.metrics
    assert loaded.bits_per_dim == 7.25
    assert loaded.harmonization == bundle.harmonization
    assert loaded.training == bundle.training
    assert loaded.preprocessing == bundle.preprocessing
    assert loaded.path == str(saved)
    assert loaded.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert not list(saved.parent.glob(".*.tmp"))  # the atomic write cleaned up


def test_sample_is_seeded(saved):
    loaded = load_bundle(saved)
    a, b = loaded.sample(2, seed=3), loaded.sample(2, seed=3)
    assert a.shape == (2, 1, *SHAPE)
    assert torch.equal(a, b)
    assert not torch.equal(a, loaded.sample(2, seed=4))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(MissingInputError) as info:
        load_bundle(path)
    assert info.value.exit_code == EX_NOINPUT == 66
    assert str(path) in str(info.value)


def _assert_prior_error(path, *fragments):
    with pytest.raises(PriorError) as info:
        load_bundle(path)
    message = str(info.value)
    assert str(path) in message
    assert info.value.exit_code == EX_DATAERR
    for fragment in fragments:
        assert fragment in message
    return message


def test_random_bytes(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_prior_error(path, "not a readable prior bundle")


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    _assert_prior_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    _assert_prior_error(path)


def test_torch_file_that_is_not_a_bundle(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    _assert_prior_error(path, "not a BlindHarmony prior bundle")
    path2 = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path2)
    _assert_prior_error(path2, "not a BlindHarmony prior bundle")


def test_pickled_code_is_refused(tmp_path):
    # weights_only loading: an arbitrary pickled object is not unpickled
    path = tmp_path / "object.pt"
    torch.save({"format": "blindharmony-prior", "obj": _plain_python_object()}, path)
    _assert_prior_error(path, "not a readable prior bundle")


def _plain_python_object():
    import fractions

    return fractions.Fraction(1, 3)


def test_wrong_format_version(saved, tmp_path):
    payload = read_payload(saved)
    payload["format_version"] = 999
    path = tmp_path / "future.pt"
    torch.save(payload, path)
    message = _assert_prior_error(path, "999", f"format {FORMAT_VERSION}")
    assert "blindharmony-train" in message


def test_incompatible_weights(saved, tmp_path):
    payload = read_payload(saved)
    payload["flow_config"] = {**payload["flow_config"], "hidden_channels": 4}
    path = tmp_path / "mismatch.pt"
    torch.save(payload, path)
    _assert_prior_error(path, "does not fit")


def test_x0_shape_mismatch(saved, tmp_path):
    payload = read_payload(saved)
    payload["x0"] = payload["x0"][:-1]
    path = tmp_path / "x0.pt"
    torch.save(payload, path)
    _assert_prior_error(path, "x0 has shape")


def test_missing_key(saved, tmp_path):
    payload = read_payload(saved)
    del payload["reference"]
    path = tmp_path / "noref.pt"
    torch.save(payload, path)
    _assert_prior_error(path, "incomplete")
