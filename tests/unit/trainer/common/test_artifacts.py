"""Atomic artifacts: readers see the old version or the new one, never a partial one."""

import pytest

from trainer.common.artifacts import atomic_dir, atomic_write_json


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_leaves_old_version_and_no_debris(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"b": 1})
    assert (tmp_path / "x.json").read_text().strip() == '{\n  "b": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_report_writers_replace_whole_files_and_keep_order(tmp_path):
    """json (caller's key order on request), text and figures all go through the atomic writer:
    a failed render leaves the old file and no temporary behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.common.artifacts import atomic_savefig, atomic_write_json, atomic_write_text

    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": 2}, sort_keys=False)
    assert (tmp_path / "r.json").read_text().index('"b"') < (tmp_path / "r.json").read_text().index('"a"')
    atomic_write_text(tmp_path / "r.md", "| row |\n")
    assert (tmp_path / "r.md").read_text() == "| row |\n"
    fig, _ = plt.subplots()
    atomic_savefig(fig, tmp_path / "r.png", dpi=20)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (tmp_path / "r.png").read_bytes()
    with pytest.raises(ValueError):
        atomic_savefig(fig, tmp_path / "r.png", dpi=-5)  # matplotlib refuses: nothing replaced
    plt.close(fig)
    assert (tmp_path / "r.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]
