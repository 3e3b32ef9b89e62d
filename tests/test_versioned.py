"""The versioned location shared by the model store and the score publisher."""

import json

import pytest

from daskgmm.versioned import JsonMetadata, VersionedLocation


def _location(path, depth=1):
    return VersionedLocation(
        path, what="test store", format="test-format", versions="v", depth=depth,
        metadata=JsonMetadata(marker="_marker.json", pointer="_pointer",
                              manifest="_manifest.json"),
    )


def test_versions_are_complete_once_their_manifest_is_written(tmp_path):
    loc = _location(tmp_path / "loc", depth=2)
    assert loc.present() is False and loc.pointer() is None
    loc.create({"kind": "t"})
    assert loc.present() is True
    assert json.loads((tmp_path / "loc" / "_marker.json").read_text()) == {
        "format": "test-format", "kind": "t"}
    for run, attempt in [("r1", "a"), ("r1", "b"), ("r2", "a")]:
        loc.fs.makedirs(loc.version_path(f"{run}/{attempt}"), exist_ok=True)
    loc.complete("r1/b", {"written_at": "1"})
    loc.complete("r2/a", {"written_at": "2"})
    assert loc.entries() == ["r1/a", "r1/b", "r2/a"]
    assert loc.entries("r1") == ["r1/a", "r1/b"]
    assert [v for v, _ in loc.versions()] == ["r1/b", "r2/a"]  # r1/a never completed
    assert loc.version_url("r2/a") == f"{tmp_path}/loc/v/r2/a" and loc.relative("r2/a") == "v/r2/a"
    loc.point_to({"version": "v/r2/a"})
    assert loc.pointer() == {"version": "v/r2/a"}
    assert not list((tmp_path / "loc").glob("_pointer.tmp-*"))  # written by a rename


def test_prune_keeps_the_newest_groups_and_the_current_version(tmp_path):
    loc = _location(tmp_path / "loc", depth=2)
    loc.create({})
    order = ["old/a", "mid/a", "cur/a", "new/a", "new/b"]
    for i, version in enumerate(order):
        loc.fs.makedirs(loc.version_path(version), exist_ok=True)
        loc.complete(version, {"written_at": str(i)})
    loc.fs.makedirs(loc.version_path("run/unfinished"), exist_ok=True)

    def by_time(version, manifest):
        return manifest["written_at"]

    deleted = loc.prune(1, "mid/a", group=lambda v: v.split("/")[0], order=by_time)
    # the newest group 'new' keeps its newest attempt, 'mid' is current, the rest goes
    assert sorted(deleted) == ["cur/a", "new/a", "old/a"]
    assert loc.entries() == ["mid/a", "new/b", "run/unfinished"]
    assert not (tmp_path / "loc" / "v" / "old").exists()  # no empty run left behind
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        loc.prune(0, None)


def test_foreign_content_files_and_other_formats_are_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"Refusing to use '.*mine' as a test store: it holds "
                                         r"data.csv, not written by daskgmm \(no _marker.json\)"):
        _location(tmp_path / "mine").present()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="it is a file"):
        _location(tmp_path / "file").present()
    other = tmp_path / "other"
    other.mkdir()
    (other / "_marker.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=r"its _marker.json is not a test store marker "
                                         r"\(format 'something-else'"):
        _location(other).present()
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["data.csv"]
