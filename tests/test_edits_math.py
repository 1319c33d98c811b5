"""The Part A algorithms against closed-form oracles: a one-image data set has a known optimal noise estimate."""

from __future__ import annotations

import pytest
import torch

from difflab.ddpm import NoiseEstimate, add_noise, learned_range_variance
from difflab.edits import algorithms as A
from difflab.edits.guidance import VIEWS, conditional, guided, highpass, lowpass
from difflab.edits.timesteps import inference_timesteps, scale_timestep, strided_timesteps
from test_edits_support import OracleBackend, one_thread, tiny_if_backend  # noqa: F401

SHAPE = (1, 3, 32, 32)


def _targets(k: int, amplitude: float = 0.3, seed: int = 0) -> torch.Tensor:
    return (torch.rand(k, *SHAPE[1:], generator=torch.Generator().manual_seed(seed)) * 2 - 1) * amplitude


def test_strided_schedule_keeps_34_steps_on_any_T():
    assert strided_timesteps(1000)[:3] == [990, 960, 930] and strided_timesteps(1000)[-1] == 0
    assert len(strided_timesteps(1000)) == 34
    assert strided_timesteps(300)[:2] == [297, 288] and len(strided_timesteps(300)) == 34
    assert inference_timesteps(1000, 20)[0] == 999 and inference_timesteps(1000, 20)[-1] == 0
    assert len(set(inference_timesteps(300, 50))) == 50
    assert scale_timestep(250, 300) == 75 and scale_timestep(750, 1000) == 750


@pytest.mark.parametrize("variance", [None, 0.3])
@pytest.mark.parametrize("i_start", [0, 10, 20, 33])
def test_iterative_denoising_with_optimal_estimate_returns_the_image(i_start, variance):
    x0 = _targets(1)
    b = OracleBackend(x0, variance=variance)
    ts = strided_timesteps(1000)
    gen = A.generator(3)
    x_t = add_noise(x0, b.alphas_cumprod[ts[i_start]], torch.randn(SHAPE, generator=gen))
    out = A.iterative_denoise(b, x_t, conditional(b, b.condition("0")), ts, i_start, gen)
    torch.testing.assert_close(out.image, x0, atol=1e-4, rtol=0)
    assert b.calls == len(ts) - i_start


@pytest.mark.parametrize("variance,expect_unit_std", [(None, True), (-1.0, True), (1.0, False)])
def test_strided_steps_keep_the_forward_marginals(variance, expect_unit_std):
    """With x0 known, x_t ~ N(sqrt(ab) x0, 1 - ab) must hold after every strided step when the added
    variance is the posterior one (v = -1 in learned range); v = +1 (beta) adds too much."""
    x0 = _targets(1)[:, :1, :8, :8]
    b = OracleBackend(x0, variance=variance)
    ts = strided_timesteps(1000)
    gen = A.generator(0)
    x_T = add_noise(x0.expand(256, -1, -1, -1), b.alphas_cumprod[ts[0]], torch.randn(256, 1, 8, 8, generator=gen))
    out = A.iterative_denoise(b, x_T, conditional(b, b.condition("0")), ts, 0, gen, keep_every=1)
    stds = []
    for x, t in zip(out.frames[1:-1], out.frame_steps[1:-1]):
        ab = b.alphas_cumprod[t]
        z = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        stds.append(float(z.std()))
        if expect_unit_std:
            assert abs(float(z.mean())) < 0.05, t
    if expect_unit_std:
        assert max(abs(s - 1) for s in stds) < 0.05, stds
    else:
        assert max(stds) > 2.0, stds


def test_learned_range_variance_matches_diffusers_on_the_strided_schedule():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    ts = strided_timesteps(1000)
    s.set_timesteps(timesteps=ts)
    v = torch.linspace(-1, 1, 7)
    for t in (990, 510, 30):
        prev = int(s.previous_timestep(t))
        ref = s._get_variance(t, v).exp()
        ours = learned_range_variance(v, s.alphas_cumprod[t], s.alphas_cumprod[prev])
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-10)


def test_cfg_inside_the_loop_extrapolates_between_the_oracle_targets():
    targets = _targets(2, amplitude=0.1)
    b = OracleBackend(targets, uncond=1)
    out = A.sample(b, "0", gamma=3.0, seed=1).image
    torch.testing.assert_close(out, targets[1:] + 3.0 * (targets[:1] - targets[1:]), atol=1e-4, rtol=0)


def test_cfg_with_gamma_one_is_the_conditional_estimate_and_zero_the_unconditional():
    b = tiny_if_backend()
    x = torch.randn(2, *b.image_shape, generator=torch.Generator().manual_seed(0))
    c = b.condition("a man wearing a hat")
    cond = conditional(b, c)(x, 500)
    g1 = guided(b, c, 1.0)(x, 500)
    torch.testing.assert_close(g1.eps, cond.eps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1.variance, cond.variance, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided(b, c, 0.0)(x, 500).eps, conditional(b, b.uncond())(x, 500).eps,
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(guided(b, c, 7.0)(x, 500).eps, cond.eps, atol=1e-3)


def test_inpainting_keeps_the_unmasked_pixels_and_fills_the_mask():
    target = _targets(1, seed=1)
    image = _targets(1, seed=2)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 4:30] = 1
    b = OracleBackend(target)
    res = A.inpaint(b, image, mask, cond="0", gamma=None, keep_every=1)
    out = res.image
    assert torch.equal(out * (1 - mask), image * (1 - mask))
    torch.testing.assert_close(out * mask, target * mask, atol=1e-4, rtol=0)
    keep = (1 - mask).expand_as(image).bool()
    for x, t in zip(res.frames[1:-1], res.frame_steps[1:-1]):  # the rest is the original noised to t
        ab = b.alphas_cumprod[t]
        z = ((x - ab.sqrt() * image) / (1 - ab).sqrt())[keep]
        assert abs(float(z.std()) - 1) < 0.1 and abs(float(z.mean())) < 0.1, t


def test_anagram_of_a_flip_symmetric_oracle_with_one_prompt_is_flip_symmetric():
    half = _targets(1)[..., :16, :]
    sym = torch.cat([half, torch.flip(half, [-2])], dim=-2)
    out = A.anagram(OracleBackend(sym), "0", "0", view="flip", gamma=None).image
    torch.testing.assert_close(out, torch.flip(out, [-2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("view", ["flip", "rot90", "rot180"])
def test_anagram_reads_as_prompt_one_and_as_prompt_two_in_the_view(view):
    """Oracle prompt 1 -> image a, prompt 2 -> view(a): the anagram estimate agrees, so the result is a."""
    fwd, _ = VIEWS[view]
    a = _targets(1, seed=4)
    b = OracleBackend(torch.cat([a, fwd(a)]))
    out = A.anagram(b, "0", "1", view=view, gamma=None).image
    torch.testing.assert_close(out, a, atol=1e-4, rtol=0)
    torch.testing.assert_close(fwd(out), fwd(a), atol=1e-4, rtol=0)


def test_lowpass_plus_highpass_is_the_original_and_lowpass_smooths():
    eps = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lowpass(eps) + highpass(eps), eps, atol=1e-6, rtol=0)
    assert lowpass(eps).std() < 0.3 * eps.std()


def test_hybrid_of_two_oracles_is_lowpass_of_one_plus_highpass_of_the_other():
    targets = _targets(2)
    out = A.hybrid(OracleBackend(targets), "0", "1", gamma=None).image
    torch.testing.assert_close(out, lowpass(targets[:1]) + highpass(targets[1:]), atol=1e-4, rtol=0)


def test_one_step_denoising_with_the_oracle_is_exact_and_forward_uses_the_formula():
    x0 = _targets(1)
    b = OracleBackend(x0)
    noisy = A.forward_process(b, x0, seed=5)
    assert sorted(noisy) == [250, 500, 750]
    gen = A.generator(5)
    for t, x in noisy.items():
        torch.testing.assert_close(x, add_noise(x0, b.alphas_cumprod[t], torch.randn(SHAPE, generator=gen)))
    for t, x in A.one_step_denoise(b, noisy, cond="0").items():
        torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


def test_best_blur_picks_the_sigma_with_the_smallest_error():
    clean = lowpass(torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)), 9, 2.0) * 3
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    sigmas = (0.5, 1.0, 2.0, 4.0)
    blurred, chosen = A.best_blur(noisy, clean, sigmas)
    assert len(chosen) == 3 and set(chosen) <= set(sigmas)
    for n in range(3):
        best = ((blurred[n] - clean[n]) ** 2).mean()
        for s in sigmas:
            one, _ = A.best_blur(noisy[n:n + 1], clean[n:n + 1], (s,))
            assert best <= ((one[0] - clean[n]) ** 2).mean() + 1e-7
        assert best < ((noisy[n] - clean[n]) ** 2).mean()


class MixtureOracle(OracleBackend):
    """The optimal noise estimate when the data are two images, equally likely: at high noise the posterior mean
    x0_hat is a blend of both, and the sampling loop commits to one of them, not necessarily the noised one."""

    def predict(self, x_t, t, cond):
        self.calls += 1
        ab = self.alphas_cumprod[t]
        d2 = ((x_t[:, None] - ab.sqrt() * self.targets[None]) ** 2).flatten(2).sum(-1)  # (N, K)
        w = torch.softmax(-d2 / (2 * (1 - ab)), dim=1)
        x0 = torch.einsum("nk,kchw->nchw", w, self.targets)
        return NoiseEstimate((x_t - ab.sqrt() * x0) / (1 - ab).sqrt(), None)


def test_iterative_denoising_generates_from_much_noise_and_restores_from_less():
    """1.4's finding on a model that can generate: from pure-ish noise the loop may land on the other image (its MSE
    above one-step's blend); first_restoring finds the noisiest later start from which it lands on the noised one."""
    targets = torch.stack([torch.full(SHAPE[1:], 0.6), torch.full(SHAPE[1:], -0.6)])
    b = MixtureOracle(targets)
    image = targets[:1]
    seed = next(s for s in range(20) if A.compare_at(b, image, 0, seed=s).mse_iterative > 1.0)  # landed on the other
    start = A.compare_at(b, image, 0, seed=seed)
    assert start.mse_iterative > start.mse_one_step  # generated, not restored
    r = A.first_restoring(b, image, 0, seed=seed)
    assert r is not None and r.i_start > 0 and r.t_start == strided_timesteps(1000)[r.i_start]
    assert r.mse_iterative <= r.mse_one_step and r.mse_iterative < 1e-3  # back on the noised image
    for i in range(1, r.i_start):  # every noisier later start still generated
        c = A.compare_at(b, image, i, seed=seed)
        assert c.mse_iterative > c.mse_one_step
