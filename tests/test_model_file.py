"""Model files: round trip, no pickle, clear errors."""

import functools
import io
import json
import zipfile

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import daskgmm
from daskgmm import GaussianMixture

from .conftest import COVARIANCE_TYPES, edit_json, make_blobs, refused_when_edited, rewrite_zip

meta_edit = functools.partial(edit_json, "metadata.json")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_round_trip(tmp_path, blobs, covariance_type):
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(blobs)
    path = tmp_path / "models" / "gm.daskgmm"
    gm.save(path)
    loaded = daskgmm.load(path)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert_array_equal(getattr(loaded, name), getattr(gm, name))
    assert loaded.get_params() == gm.get_params()
    assert (loaded.n_iter_, loaded.converged_, loaded.lower_bound_) == (
        gm.n_iter_, gm.converged_, gm.lower_bound_)
    assert loaded.lower_bounds_ == gm.lower_bounds_
    assert_allclose(loaded.score_samples(blobs), gm.score_samples(blobs), rtol=1e-12)
    meta = json.loads(zipfile.ZipFile(path).read("metadata.json"))
    assert meta["fit_data"] == {"n_samples": 900, "n_features": 3, "n_incomplete": 0}
    assert meta["format_version"] == 1 and meta["library_version"] == daskgmm.__version__


def test_files_hold_no_pickle(tmp_path, blobs):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if name.endswith(".npy"):
                np.load(io.BytesIO(data), allow_pickle=False)  # raises on object arrays
            else:
                json.loads(data)


def test_newer_format_version_is_refused(tmp_path, blobs):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)

    def bump(members):
        meta = json.loads(members["metadata.json"])
        meta["format_version"] = 99
        members["metadata.json"] = json.dumps(meta).encode()

    rewrite_zip(path, bump)
    with pytest.raises(daskgmm.model_file.ModelFileError, match="format version 99, newer"):
        daskgmm.load(path)


def test_missing_pieces_are_named(tmp_path, blobs):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)
    rewrite_zip(path, lambda m: m.pop("arrays/means_.npy"))
    with pytest.raises(daskgmm.model_file.ModelFileError, match="missing arrays/means_.npy"):
        daskgmm.load(path)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "x.daskgmm"
    path.write_text("hello")
    with pytest.raises(daskgmm.model_file.ModelFileError, match="not a daskgmm model file"):
        daskgmm.load(path)
    with pytest.raises(FileNotFoundError, match="No daskgmm model file"):
        daskgmm.load(tmp_path / "missing.daskgmm")


def test_damaged_files_are_refused_with_the_piece_named(tmp_path, blobs):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)
    original = path.read_bytes()

    def wrong_means(members):
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 5)))
        members["arrays/means_.npy"] = buf.getvalue()

    cases = [
        (meta_edit(lambda m: m["params"].update(new_option=1)), "does not know: new_option"),
        (meta_edit(lambda m: m["fit_data"].pop("n_samples")), "missing fit_data.n_samples"),
        (lambda m: m.update({"metadata.json": b"{not json"}), "unreadable metadata.json"),
        (wrong_means, r"means_.npy has shape \(2, 5\), expected \(2, 3\)"),
    ]
    for edit, message in cases:
        path.write_bytes(original)
        rewrite_zip(path, edit)
        with pytest.raises(daskgmm.model_file.ModelFileError, match=message):
            daskgmm.load(path)


def test_model_file_keeps_the_threshold_and_quantiles(tmp_path):
    X = make_blobs(4_000, 3, 3, seed=5)
    ours = GaussianMixture(3, random_state=0, tol=1e-6).fit(X)
    ours.set_threshold(X, contamination=0.03)
    path = tmp_path / "m.daskgmm"
    ours.save(path)
    back = daskgmm.load(path)
    for name in ("threshold_", "contamination_", "threshold_bounds_",
                 "training_log_likelihood_"):
        assert getattr(back, name) == pytest.approx(getattr(ours, name), rel=1e-15)
    assert_array_equal(back.score_quantiles_, ours.score_quantiles_)
    assert_array_equal(back.score_quantile_levels_, ours.score_quantile_levels_)
    assert daskgmm.model_id(back) == daskgmm.model_id(ours)
    assert_array_equal(back.anomaly_scores(X)["is_anomaly"], ours.anomaly_scores(X)["is_anomaly"])
    before = daskgmm.model_id(ours)
    ours.set_threshold(threshold=-1.0)
    assert daskgmm.model_id(ours) != before  # the id covers the threshold

    raw = zipfile.ZipFile(path)
    meta = json.loads(raw.read("metadata.json"))
    meta["anomaly"]["score_quantiles"] = [1.0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in raw.namelist():
            data = json.dumps(meta) if name == "metadata.json" else raw.read(name)
            zf.writestr(name, data)
    (tmp_path / "bad.daskgmm").write_bytes(buf.getvalue())
    with pytest.raises(daskgmm.model_file.ModelFileError, match="score_quantiles differ in length"):
        daskgmm.load(tmp_path / "bad.daskgmm")


def _npy(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update({"arrays/weights_.npy": _npy(np.array([np.nan, 0.5]))}),
     r"arrays/weights_.npy holds nan at \(0,\)"),
    (lambda m: m.update({"arrays/weights_.npy": _npy(np.array([2.5, 2.5]))}),
     r"weights_.npy must be positive and sum to 1; got minimum 2.5 and sum 5"),
    (lambda m: m.update({"arrays/weights_.npy": _npy(np.array([1.5, -0.5]))}),
     "must be positive and sum to 1"),
    (lambda m: m.update({"arrays/precisions_cholesky_.npy": _npy(
        np.full((2, 3, 3), np.nan))}), r"precisions_cholesky_.npy holds nan"),
    (lambda m: m.update({"arrays/precisions_cholesky_.npy": _npy(np.ones((2, 3, 3)))}),
     r"precisions_cholesky_.npy is not upper triangular with a positive diagonal "
     r"\(component 0\)"),
    (lambda m: m.update({"arrays/means_.npy": _npy(np.array([["a"] * 3] * 2,
                                                            dtype=object), True)}),
     r"member arrays/means_.npy holds Python objects, which are never unpickled"),
    (lambda m: m.update({"arrays/means_.npy": b"not an array"}),
     r"member arrays/means_.npy is not a .npy array"),
    (lambda m: m.update({"arrays/means_.npy": _npy(np.zeros((2, 3), dtype=np.int64))}),
     r"member arrays/means_.npy has dtype int64, not floating point"),
])
def test_damaged_arrays_are_refused_with_the_member_named(tmp_path, blobs, edit, message):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)
    refused_when_edited(path, edit, message)


def test_edited_or_corrupted_files_are_refused(tmp_path, blobs):
    path = tmp_path / "gm.daskgmm"
    gm = GaussianMixture(2, random_state=0).fit(blobs).set_threshold(blobs)
    gm.save(path)
    original = path.read_bytes()

    cases = [
        # a plausible edit: a lower threshold flags fewer rows, and nothing else says so
        (meta_edit(lambda m: m["anomaly"].update(threshold=m["anomaly"]["threshold"] - 5)),
         r"was changed after it was written: its content does not hash to its model id"),
        (lambda m: m.update({"arrays/means_.npy": _npy(gm.means_ + 1e-3)}),
         "was changed after it was written"),
        (meta_edit(lambda m: m.update(n_iter="many")),
         r"metadata.json field 'n_iter' should be an int, got \"many\""),
        (meta_edit(lambda m: m.update(feature_names=["a"])),
         "lists 1 feature names for 3 features"),
        (meta_edit(lambda m: m["anomaly"].update(threshold="low")),
         r"the 'anomaly' entry of metadata.json is damaged"),
        (meta_edit(lambda m: m["anomaly"].update(contamination=3)),
         r"the 'anomaly' entry of metadata.json is damaged"),
        (meta_edit(lambda m: m.pop("model_id")), "missing model_id"),
        (lambda m: m.update({"metadata.json": b"\xff\xfe{"}), "unreadable metadata.json"),
    ]
    for edit, message in cases:
        path.write_bytes(original)
        rewrite_zip(path, edit)
        with pytest.raises(daskgmm.model_file.ModelFileError, match=message):
            daskgmm.load(path)
    # a flipped byte inside a compressed member: the zip's CRC names the member
    path.write_bytes(original)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("arrays/means_.npy")
    raw = bytearray(original)
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(daskgmm.model_file.ModelFileError,
                       match=r"member arrays/means_.npy is damaged"):
        daskgmm.load(path)


# Regressions found by the property tests (tests/test_properties.py)


def _patch_header(raw, name, local=None, central=None):
    """``raw`` with bytes of member ``name``'s local header and central directory entry
    changed (as flipped bytes might): ``local`` and ``central`` map an offset in the
    header to a function of the byte there."""
    data = bytearray(raw)
    at = zipfile.ZipFile(io.BytesIO(raw)).getinfo(name).header_offset
    for offset, fn in (local or {}).items():
        data[at + offset] = fn(data[at + offset])
    at = raw.rindex(b"PK\x01\x02", 0, raw.rindex(name.encode()))
    for offset, fn in (central or {}).items():
        data[at + offset] = fn(data[at + offset])
    return bytes(data)


def _meta_edit(fn, rehash=False):
    """An edit of metadata.json; ``rehash``: with the model id made to match, as a
    tamperer would (the content id of the edited model; no anomaly threshold)."""
    def edit(members):
        meta = json.loads(members["metadata.json"])
        fn(meta)
        if rehash:
            arrays = [np.load(io.BytesIO(members[f"arrays/{name}.npy"])) for name in (
                "weights_", "means_", "precisions_cholesky_", "covariances_")]
            meta["model_id"] = daskgmm.model_file.content_id(daskgmm.model_file.ModelRecord(
                params=meta["params"], mixture=daskgmm.Mixture(meta["covariance_type"], *arrays),
                fit=daskgmm.FitSummary(0, False, 0.0), n_features_in=meta["n_features_in"]))
        members["metadata.json"] = json.dumps(meta).encode()
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    # was TypeError: len() of unsized object
    (lambda m: m.update({"arrays/weights_.npy": _npy(np.float64(1.0))}),
     r"arrays/weights_.npy has shape \(\), expected \(2,\)"),
    # was TypeError: unhashable type: 'list'
    (_meta_edit(lambda m: m.update(arrays=[["weights_"]])),
     r"metadata.json field 'arrays' should be a list among"),
    # was KeyError: 'weights_'
    (_meta_edit(lambda m: m.update(arrays=["means_", "precisions_cholesky_"])),
     r"metadata.json field 'arrays' should be a list among .* with \['weights_'"),
    # was "format version '1', newer than this daskgmm reads"
    (_meta_edit(lambda m: m.update(format_version="1")),
     r"metadata.json field 'format_version' should be a positive int, got \"1\""),
    # was a shape error naming the array for -5 features
    (_meta_edit(lambda m: m.update(n_features_in=-5)),
     r"metadata.json field 'n_features_in' should be a positive int, got -5"),
    (_meta_edit(lambda m: m["params"].update(n_components="2")),
     r"metadata.json field 'params.n_components' should be a positive int, got \"2\""),
    # was ValueError from GaussianMixture.set_fitted (the estimator is built from the
    # parameters, the mixture from the arrays)
    (_meta_edit(lambda m: m["params"].update(covariance_type="diag"), rehash=True),
     r"field 'params.covariance_type' should be 'full', as the field 'covariance_type', "
     r"got \"diag\""),
    (_meta_edit(lambda m: m["params"].pop("n_components"), rehash=True),
     r"field 'params' should be an object with 'n_components'"),
])
def test_inconsistent_files_are_refused_with_the_piece_named(tmp_path, blobs, edit, message):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)
    rewrite_zip(path, edit)
    with pytest.raises(daskgmm.model_file.ModelFileError, match=message) as info:
        daskgmm.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("patch", "message"), [
    # an unknown compression method (was NotImplementedError)
    ({"local": {8: lambda b: 99}, "central": {10: lambda b: 99}},
     r"member arrays/means_.npy is damaged \(NotImplementedError"),
    # the encryption flag (was RuntimeError: password required for extraction)
    ({"local": {6: lambda b: b | 1}, "central": {8: lambda b: b | 1}},
     r"member arrays/means_.npy is damaged \(RuntimeError"),
    # the UTF-8 flag on a name that is not UTF-8 (was UnicodeDecodeError)
    ({"central": {9: lambda b: b | 8, 46: lambda b: 0xFF}},
     r"is not a daskgmm model file \(not a zip archive .*UnicodeDecodeError"),
])
def test_damaged_zip_headers_are_refused(tmp_path, blobs, patch, message):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(2, random_state=0).fit(blobs).save(path)
    path.write_bytes(_patch_header(path.read_bytes(), "arrays/means_.npy", **patch))
    with pytest.raises(daskgmm.model_file.ModelFileError, match=message) as info:
        daskgmm.load(path)
    assert str(path) in str(info.value)


def test_oversized_members_and_invalid_parameters_are_refused(tmp_path):
    """A member claiming more bytes than its shapes allow (a decompression bomb) is not
    read; parameters the estimator refuses are named even with a recomputed model id."""
    import zipfile

    from daskgmm.model_file import ModelFileError, content_id, read_model, write_model

    X = np.random.default_rng(0).normal(size=(200, 3))
    gm = daskgmm.GaussianMixture(2, random_state=0).fit(X)
    path = tmp_path / "m.daskgmm"
    gm.save(path)
    members = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    bomb = tmp_path / "bomb.daskgmm"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data + b"\0" * 50_000_000 if name == "arrays/means_.npy"
                        else data)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ModelFileError, match=r"member arrays/means_\.npy claims 50,000,\d+ "
                                             r"bytes uncompressed, more than the 4,240 its "
                                             r"metadata allows"):
        daskgmm.load(bomb)

    record = read_model(path)
    record.params["tol"] = -1.0  # a parameter the estimator refuses, hashed anew
    bad = tmp_path / "bad.daskgmm"
    write_model(bad, record)
    assert content_id(read_model(bad)) == content_id(record)
    with pytest.raises(ModelFileError, match=r"bad\.daskgmm': metadata\.json holds parameters "
                                             r"this daskgmm refuses \(The 'tol' parameter of "
                                             r"GaussianMixture must be a float"):
        daskgmm.load(bad)
