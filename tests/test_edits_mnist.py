"""Part A edits end to end on a tiny class-conditioned MNIST checkpoint, and the input validation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from difflab.edits import algorithms as A
from difflab.edits import load_backend, load_image, load_mask, rect_mask
from difflab.edits.images import center_crop_resize, pil_to_tensor
from difflab.train import save_checkpoint
from difflab.unet import TimeConditionalUNet
from test_edits_support import one_thread, tiny_mnist_checkpoint  # noqa: F401


@pytest.fixture
def mnist():
    return load_backend("mnist", checkpoint=tiny_mnist_checkpoint())


def _hand_drawn_seven(path):
    """A dark '7' stroke on white paper, as a user would draw it."""
    img = Image.new("RGB", (120, 100), "white")
    ImageDraw.Draw(img).line([(35, 20), (85, 20), (55, 85)], fill="black", width=9)
    img.save(path)
    return path


def _in_unit_range(x):
    return bool(torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1)


def test_backend_from_checkpoint_has_the_ddpm_schedule_and_digit_conditions(mnist):
    assert len(mnist.alphas_cumprod) == 300 and mnist.image_shape == (1, 28, 28)
    assert torch.equal(mnist.condition("6"), torch.nn.functional.one_hot(torch.tensor([6]), 10).float())
    assert torch.equal(mnist.condition(""), torch.zeros(1, 10))
    assert A.forward_process(mnist, torch.zeros(1, 1, 28, 28)).keys() == {75, 150, 225}


def test_sdedit_of_a_hand_drawn_digit(mnist, tmp_path):
    x = load_image(_hand_drawn_seven(tmp_path / "seven.png"), mnist.image_shape, mnist.value_range)
    assert x.shape == (1, 1, 28, 28) and _in_unit_range(x)
    assert x[0, 0, 0, 0] < 0.1 and x.max() > 0.9  # inverted to white on black
    out = A.sdedit(mnist, x, "7", i_starts=(1, 10, 33))
    again = A.sdedit(mnist, x, "7", i_starts=(1, 10, 33))
    assert all(torch.equal(out[i], again[i]) and _in_unit_range(out[i]) for i in out)
    assert not torch.equal(out[1], A.sdedit(mnist, x, "7", i_starts=(1,), seed=7)[1])
    near = A.sdedit(mnist, x, "7", i_starts=(33, 1), gamma=None)
    assert (near[33] - x).abs().mean() < 0.05 < (near[1] - x).abs().mean()


def test_six_nine_anagram_and_hybrid_digits(mnist):
    ana = A.anagram(mnist, "6", "9", view="rot180", seed=180)
    assert ana.image.shape == (1, 1, 28, 28) and _in_unit_range(ana.image)
    assert torch.equal(ana.image, A.anagram(mnist, "6", "9", view="rot180", seed=180).image)
    assert not torch.equal(ana.image, A.anagram(mnist, "9", "6", view="rot180", seed=180).image)
    hyb = A.hybrid(mnist, "1", "8", num=2)
    assert hyb.image.shape == (2, 1, 28, 28) and _in_unit_range(hyb.image)


def test_inpainting_with_a_mask_image_keeps_the_rest(mnist, tmp_path):
    orig = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    mask_img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(mask_img).rectangle([5, 8, 20, 14], fill=255)
    mask_img.save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", (28, 28))
    assert torch.equal(mask, rect_mask((28, 28), 8, 5, 7, 16))
    out = A.inpaint(mnist, orig, mask, cond="3")
    assert torch.equal(out.image * (1 - mask), orig * (1 - mask))
    assert not torch.allclose(out.image * mask, orig * mask)
    assert len(out.frames) == len(out.frame_steps) and out.frame_steps[-1] == -1


def test_web_photo_is_centre_cropped_and_resized():
    img = Image.new("RGB", (90, 30))
    for x0, colour in ((0, "red"), (30, "blue"), (60, "green")):
        ImageDraw.Draw(img).rectangle([x0, 0, x0 + 29, 29], fill=colour)
    x = pil_to_tensor(center_crop_resize(img, (16, 16)), 3, (-1.0, 1.0))
    torch.testing.assert_close(x[0, :, 8, 8], torch.tensor([-1.0, -1.0, 1.0]))
    assert x.shape == (1, 3, 16, 16) and x.min() >= -1 and x.max() <= 1


def _one_line(exc_info):
    return "\n" not in str(exc_info.value)


def test_unreadable_images_and_bad_masks_are_one_line_errors(mnist, tmp_path):
    with pytest.raises(ValueError, match="does not exist") as e:
        load_image(tmp_path / "missing.png", mnist.image_shape, mnist.value_range)
    assert _one_line(e)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot be read as an image") as e:
        load_image(tmp_path / "notes.png", mnist.image_shape, mnist.value_range)
    assert _one_line(e)
    with pytest.raises(ValueError, match="mask is 28x20 but the image is 28x28; make a 28x28"):
        load_mask(torch.zeros(20, 28), (28, 28))
    grey = torch.zeros(28, 28)
    grey[3, 3] = 0.5
    with pytest.raises(ValueError, match="not binary"):
        load_mask(grey, (28, 28))
    with pytest.raises(ValueError, match="does not fit"):
        rect_mask((28, 28), 20, 0, 10, 5)


def test_unknown_condition_and_out_of_range_steps_name_the_fix(mnist, tmp_path):
    with pytest.raises(ValueError, match="use a digit") as e:
        A.sample(mnist, "cat")
    assert _one_line(e)
    with pytest.raises(ValueError, match="i_start=34 is out of range; use 0..33"):
        A.sdedit(mnist, torch.zeros(1, 1, 28, 28), "1", i_starts=(34,))
    with pytest.raises(ValueError, match="t=300 is out of range; use 0..299"):
        A.forward_process(mnist, torch.zeros(1, 1, 28, 28), timesteps=[300])
    with pytest.raises(ValueError, match="unknown view"):
        A.anagram(mnist, "6", "9", view="mirror")
    with pytest.raises(ValueError, match="checkpoint="):
        load_backend("mnist")
    path = save_checkpoint(tmp_path / "time.pt", TimeConditionalUNet(hidden=4), "time",
                           {"num_timesteps": 300, "beta1": 1e-4, "beta2": 0.02})
    with pytest.raises(ValueError, match="class-conditioned"):
        load_backend("mnist", checkpoint=path)


def test_a_class_checkpoint_without_its_schedule_is_refused_by_name(tmp_path):
    from difflab.unet import ClassConditionalUNet

    path = save_checkpoint(tmp_path / "class.pt", ClassConditionalUNet(hidden=4), "class", {"stage": "class"})
    with pytest.raises(ValueError, match="lacks the schedule key 'num_timesteps'.*written by the training flow"):
        load_backend("mnist", checkpoint=path)
