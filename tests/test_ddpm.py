import math

import pytest
import torch

from difflab.ddpm import (DDPMSchedule, add_noise, guide, guided_eps_fn, ddpm_loss, denoise, posterior_mean, predict_x0,
                          sample)
from difflab.unet import ClassConditionalUNet, TimeConditionalUNet

# float64 numpy: np.cumprod(1 - np.linspace(1e-4, 0.02, 300))
GOLDEN = {0: (1e-4, 0.9999), 1: (0.00016655518394648828, 0.9997334614715719),
          99: (0.006688963210702341, 0.7116198699125144), 150: (0.010083277591973243, 0.4623452376194675),
          299: (0.02, 0.04805842894429403)}


def test_schedule_golden_values():
    s = DDPMSchedule(300, 1e-4, 0.02)
    assert s.betas.shape == s.alphas.shape == s.alpha_bars.shape == (300,)
    for t, (beta, ab) in GOLDEN.items():
        assert s.betas[t].item() == pytest.approx(beta, rel=1e-6)
        assert s.alpha_bars[t].item() == pytest.approx(ab, rel=1e-5)
    assert torch.allclose(s.alphas, 1 - s.betas)
    assert s.alpha_bar_prev(0).item() == 1.0 and s.alpha_bar_prev(10).item() == s.alpha_bars[9].item()
    assert {"betas", "alphas", "alpha_bars"} <= dict(s.named_buffers()).keys()


def test_from_alpha_bars_round_trip():
    s = DDPMSchedule(50, 1e-4, 0.05)
    r = DDPMSchedule.from_alpha_bars(s.alpha_bars)
    assert torch.allclose(r.betas, s.betas, atol=1e-6) and torch.allclose(r.alpha_bars, s.alpha_bars)


def test_forward_noising_statistics():
    torch.manual_seed(0)
    x0 = torch.full((20000, 1, 2, 2), 0.7)
    ab = torch.tensor(0.36)
    x_t = add_noise(x0, ab, torch.randn_like(x0))
    assert x_t.mean().item() == pytest.approx(0.6 * 0.7, abs=0.01)
    assert x_t.std().item() == pytest.approx(0.8, abs=0.01)


def test_predict_x0_inverts_forward_noising():
    x0, eps = torch.rand(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    ab = torch.tensor([0.9, 0.5, 0.1, 0.01])
    assert torch.allclose(predict_x0(add_noise(x0, ab, eps), eps, ab), x0, atol=1e-4)


def test_posterior_mean_stride_one_is_algorithm_b2():
    s = DDPMSchedule(300)
    t = 120
    x_t, x0 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ab, ab_prev, beta, alpha = s.alpha_bars[t], s.alpha_bars[t - 1], s.betas[t], s.alphas[t]
    expected = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    assert torch.allclose(posterior_mean(x_t, x0, ab, ab_prev), expected, atol=1e-6)


def test_sampler_returns_the_single_training_image_with_the_optimal_estimator():
    """For a data set of one image x*, eps*(x_t, t) = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t) is optimal."""
    s = DDPMSchedule(300)
    target = torch.rand(1, 1, 28, 28)

    def oracle(x, t):
        ab = s.alpha_bars[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    out, frames = sample(oracle, s, (3, 1, 28, 28), torch.Generator().manual_seed(0), keep_every=50)
    assert torch.allclose(out, target.expand(3, -1, -1, -1), atol=1e-4)
    assert len(frames) == 6  # t = 250, 200, ..., 0


def test_cfg_gamma_one_is_conditional_and_zero_unconditional():
    eu, ec = torch.randn(5), torch.randn(5)
    assert torch.allclose(guide(eu, ec, 1.0), ec)
    assert torch.allclose(guide(eu, ec, 0.0), eu)
    assert torch.allclose(guide(eu, ec, 5.0), eu + 5 * (ec - eu))


def test_cfg_eps_fn_gamma_one_equals_conditional_pass():
    torch.manual_seed(0)
    s = DDPMSchedule(20)
    net = ClassConditionalUNet(hidden=4).eval()
    labels = torch.tensor([3, 7])
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 12])
    c = torch.nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        assert torch.allclose(guided_eps_fn(net, s, labels, 1.0)(x, t), net(x, s.time_input(t), c), atol=1e-5)


def test_ddpm_loss_is_near_one_for_a_zero_predictor_and_drops_uncond():
    class Zero(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, c=None):
            self.seen_c = c
            return torch.zeros_like(x)

    s = DDPMSchedule(300)
    x0 = torch.rand(512, 1, 28, 28)
    z = Zero()
    loss = ddpm_loss(z, s, x0, torch.zeros(512, dtype=torch.long), p_uncond=0.5,
                     generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, abs=0.01)
    dropped = (z.seen_c.sum(1) == 0).float().mean().item()
    assert dropped == pytest.approx(0.5, abs=0.08)


def test_time_model_output_is_finite_through_sampling():
    s = DDPMSchedule(10)
    net = TimeConditionalUNet(hidden=4).eval()
    out, _ = sample(lambda x, t: net(x, s.time_input(t)), s, (2, 1, 28, 28), torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all() and out.shape == (2, 1, 28, 28)
    assert not math.isclose(out.std().item(), 0.0)


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError, match="beta1"):
        DDPMSchedule(300, 0.5, 0.1)


def test_clip_x0_clamps_the_predicted_clean_image_at_every_step():
    """The last step returns x0_hat itself (alpha_bar_prev = 1), so with an estimator that predicts a clean
    image of 3.0 everywhere the plain sampler ends at 3.0 and the clipped one at the range's top."""

    s = DDPMSchedule(10)

    def eps_fn(x, t):  # eps such that predict_x0 gives 3.0 everywhere
        ab = s.alpha_bars[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * 3.0) / (1 - ab).sqrt()

    gen = torch.Generator().manual_seed(0)
    plain, _ = sample(eps_fn, s, (2, 1, 4, 4), gen)
    clipped, _ = sample(eps_fn, s, (2, 1, 4, 4), torch.Generator().manual_seed(0), clip_x0=(0.0, 1.0))
    assert torch.allclose(plain, torch.full_like(plain, 3.0), atol=1e-4)
    assert torch.allclose(clipped, torch.ones_like(clipped), atol=1e-4)


@pytest.mark.parametrize("variance,diffusers_variance", [("posterior", "fixed_small"), ("beta", "fixed_large")])
@pytest.mark.parametrize("num_inference_steps", [10, 300])
def test_the_one_loop_matches_diffusers_ddpm_scheduler(variance, diffusers_variance, num_inference_steps):
    """`denoise` over any stride against diffusers' DDPMScheduler.step, same eps function and same noise."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(300, beta_start=1e-4, beta_end=0.02, variance_type=diffusers_variance, clip_sample=False)
    ref.set_timesteps(num_inference_steps)
    s = DDPMSchedule(300)
    net = TimeConditionalUNet(hidden=4).eval()

    def eps(x, t):
        return net(x, s.time_input(torch.as_tensor(t).expand(x.shape[0])))

    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    ours = denoise(eps, s, x_T, ref.timesteps.tolist(), noise=lambda x: torch.randn(x.shape, generator=gen),
                   variance=variance)
    gen_ref, x = torch.Generator().manual_seed(1), x_T
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(eps(x, int(t)), t, x, generator=gen_ref).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_step_is_algorithm_b2_at_stride_one_and_rejects_bad_steps():
    s = DDPMSchedule(50)
    x, eps, z = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = 20
    x0 = predict_x0(x, eps, s.alpha_bars[t])
    expected = posterior_mean(x, x0, s.alpha_bars[t], s.alpha_bars[t - 1]) + s.betas[t].sqrt() * z
    assert torch.equal(s.step(eps, t, t - 1, x, variance="beta", noise=z), expected)
    assert torch.equal(s.step(eps, 0, -1, x), predict_x0(x, eps, s.alpha_bars[0]))  # last step: the clean image
    for bad in [dict(t=t, t_prev=t), dict(t=50, t_prev=10), dict(t=5, t_prev=-2)]:
        with pytest.raises(ValueError, match="t_prev"):
            s.step(eps, bad["t"], bad["t_prev"], x)
    with pytest.raises(ValueError, match="unknown variance"):
        s.step(eps, t, t - 1, x, variance="large", noise=z)


def test_denoise_calls_the_hooks_once_per_step_in_order():
    s = DDPMSchedule(30)
    seen, after = [], []

    def after_step(x, ab_next):
        after.append(float(ab_next))
        return x

    denoise(lambda x, t: torch.zeros_like(x), s, torch.randn(1, 1, 2, 2), [29, 19, 9, 0],
            after_step=after_step, on_step=lambda k, t, t_next, x: seen.append((k, t, t_next)))
    assert seen == [(0, 29, 19), (1, 19, 9), (2, 9, 0), (3, 0, -1)]
    assert after == pytest.approx([s.alpha_bars[19].item(), s.alpha_bars[9].item(), s.alpha_bars[0].item(), 1.0])
