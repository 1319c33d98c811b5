"""Issue 8, items 6 and 7: corrupt files are named (and set aside where the work can be redone);
a full disk says so and where, and leaves no temp file behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from difflab import files
from difflab.config import JudgeConfig
from difflab.files import CorruptFileError, DiskFullError
from difflab.judge import Judge, load_judge, save_judge
from difflab.train import TrainInputs, TrainSettings, fit, load_model, plan_training, save_checkpoint
from difflab.unet import build_model


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tiny_fit(ckpt_dir: Path, epochs: int = 2):
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    plan = plan_training(epochs, 8, [epochs], len(y), match_course_steps=False)
    loss = lambda m, xb, yb, g: ((m(xb) - xb) ** 2).mean()  # noqa: E731
    return fit(TrainSettings("unconditional", {"hidden": 2}, plan, 1e-3, 8, 0, "cpu"), TrainInputs(x, y, loss, ckpt_dir))


def test_truncated_checkpoint_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "final.pt", build_model("unconditional", hidden=2), "unconditional")
    _truncate(path)
    with pytest.raises(CorruptFileError, match=str(path)):
        load_model(path)


def test_corrupt_resume_checkpoint_is_set_aside_and_training_redone(tmp_path):
    _tiny_fit(tmp_path)
    _truncate(tmp_path / "last.pt")
    result = _tiny_fit(tmp_path)
    assert result.resumed_from_epoch == 0  # started over instead of failing
    assert len(list(tmp_path.glob("last.pt.corrupt-*"))) == 1
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 2


def test_truncated_judge_cache_is_named(tmp_path):
    path = save_judge(Judge(JudgeConfig(width=2, feature_dim=4)), tmp_path / "judge.pt")
    _truncate(path)
    with pytest.raises(CorruptFileError, match=str(path)):
        load_judge(path)


def test_corrupt_judge_cache_entry_is_set_aside_and_retrained(tmp_path, monkeypatch):
    import tasks.evaluation as ev
    from difflab.config import PartBConfig

    cfg = PartBConfig(profile="tiny", evaluation={"judge_cache": str(tmp_path)})
    trained = []

    def fake_train(images, labels, jcfg):
        trained.append(1)
        return Judge(JudgeConfig(width=2, feature_dim=4))

    monkeypatch.setattr(ev, "train_judge", fake_train)
    monkeypatch.setattr(ev, "judge_accuracy", lambda judge, x, y: 0.5)
    data = type("D", (), {"checksum": "abc"})()
    mnist = type("M", (), {"train_images": None, "train_labels": None, "test_images": None, "test_labels": None})()
    _, _, cached, path = ev.get_judge(cfg, data, mnist)
    assert not cached and trained == [1]
    _truncate(path)
    _, _, cached, path = ev.get_judge(cfg, data, mnist)
    assert not cached and trained == [1, 1]  # retrained, not crashed
    assert len(list(tmp_path.glob("judge-*.corrupt-*"))) == 1
    load_judge(path)  # the new entry reads back


def _no_space(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"partial")  # a half-written temp file, as a full disk leaves
    raise OSError(errno.ENOSPC, "No space left on device", str(f))


def test_disk_full_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(files.torch, "save", _no_space)
    with pytest.raises(DiskFullError, match="disk full") as info:
        save_checkpoint(tmp_path / "ckpt" / "last.pt", build_model("unconditional", hidden=2), "unconditional")
    assert str(tmp_path / "ckpt" / "last.pt") in str(info.value) and info.value.errno == errno.ENOSPC
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_disk_full_in_the_tracking_store_reads_as_disk_full(tmp_path, monkeypatch):
    from difflab.cli.failures import disk_full_line as _disk_full_line

    monkeypatch.chdir(tmp_path)
    try:
        try:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")
        except RuntimeError as inner:
            raise RuntimeError("Query-invoked autoflush") from inner
    except RuntimeError as outer:
        line = _disk_full_line(outer)
    assert line.startswith("disk full:") and "mlflow" in line.lower() and str(tmp_path) in line
    assert _disk_full_line(ValueError("epochs must be > 0")) is None
