"""The reuse cache key's code part: a hash of the whole library package, not a hand-kept file list."""

from __future__ import annotations

import shutil
from pathlib import Path

from difflab import provenance


def _copy_package(tmp_path: Path) -> Path:
    dst = tmp_path / "difflab"
    shutil.copytree(provenance.PACKAGE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_package_hash_changes_when_a_module_is_added_edited_or_renamed(tmp_path):
    pkg = _copy_package(tmp_path)
    base = provenance.package_hash(pkg)
    assert base == provenance.package_hash(pkg) == provenance.package_hash()  # deterministic, same code
    (pkg / "edits" / "new_section.py").write_text("X = 1\n")  # a new module, in a subpackage
    added = provenance.package_hash(pkg)
    assert added != base
    (pkg / "edits" / "new_section.py").write_text("X = 2\n")
    edited = provenance.package_hash(pkg)
    (pkg / "edits" / "new_section.py").rename(pkg / "edits" / "other_section.py")
    assert len({base, added, edited, provenance.package_hash(pkg)}) == 4


def test_package_hash_ignores_files_that_are_not_python(tmp_path):
    pkg = _copy_package(tmp_path)
    base = provenance.package_hash(pkg)
    (pkg / "notes.txt").write_text("not code")
    assert provenance.package_hash(pkg) == base


def test_the_training_cache_key_follows_the_package_hash(monkeypatch):
    from difflab.config import PartBConfig
    from difflab.stages import STAGES
    from tasks.refs import DataRef
    from tasks.training import stage_cache_key

    cfg, stage = PartBConfig(), STAGES["denoiser"]
    data = DataRef(path="data.pt", source="test", checksum="abc", n_train=1, n_test=1)
    before = stage_cache_key(cfg, stage, data)
    monkeypatch.setattr(provenance, "package_hash", lambda root=None: "another-code-version")
    assert stage_cache_key(cfg, stage, data) != before


def test_cache_key_hashes_its_parts_in_order_with_sorted_keys():
    assert provenance.cache_key("a", {"x": 1, "y": 2}) == provenance.cache_key("a", {"y": 2, "x": 1})
    assert provenance.cache_key("a", 1) != provenance.cache_key(1, "a")
    assert len(provenance.cache_key("a")) == provenance.KEY_CHARS
