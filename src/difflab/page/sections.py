"""What the page shows: the write-up's sections in the spec's order, each with its figures (image name
patterns from `difflab.names`, per run) and numbers; the stage order and Part A order the page follows."""

from __future__ import annotations

from dataclasses import dataclass

from difflab import names
from difflab.config import PART_A_SECTIONS

P = tuple[tuple[str, str], ...]
"""(param key, how the caption names it)"""

DENOISER_P: P = (("hidden", "D"), ("batch_size", "batch"), ("plan.epochs", "epochs"), ("lr", "Adam lr"),
                 ("sigma", "trained at σ"), ("seed", "seed"))
TIME_P: P = (("hidden", "D"), ("batch_size", "batch"), ("plan.epochs", "epochs"), ("lr", "Adam lr"),
             ("lr_final_factor", "lr decays to ×"), ("num_timesteps", "T"), ("beta1", "β₁"), ("beta2", "β_T"),
             ("seed", "seed"))
CLASS_P: P = TIME_P + (("p_uncond", "p_uncond"), ("guidance", "guidance γ"))
TIME_SAMPLE_P: P = (("gif_frames", "GIF frames"), ("seed", "seed"))
"""The time-conditioned model has no condition, so no guidance: its captions must not name one."""
SAMPLE_P: P = (("guidance", "guidance γ"),) + TIME_SAMPLE_P
PART_A_P: P = (("backend", "backend"), ("model", "model"), ("num_timesteps", "T"), ("seed", "seed"))


@dataclass(frozen=True)
class Fig:
    stage: str
    pattern: str
    """fnmatch pattern over image names in the stage's run."""
    title: str
    what: str
    """A sentence on what the figure shows."""
    params: P = ()
    pixelated: bool = True
    wide: bool = False
    """A long strip (a trajectory, thousands of pixels wide): shown at full size in a scrolling box, so its
    labels keep the size they were drawn at, instead of shrunk to the column's width."""
    framed: bool = False
    """A frame and a grey mat around the image, for images with white edges (an inpainting mask)."""
    optional: bool = False
    """Left out of the page when no run has it (made only in some cases, e.g. 1.4's restoring start)."""


@dataclass(frozen=True)
class Number:
    label: str
    stage: str
    key: str
    kind: str = "float"
    """float, percent, seconds or int."""


@dataclass(frozen=True)
class Section:
    id: str
    number: str
    title: str
    text: str
    figures: tuple[Fig, ...] = ()
    numbers: tuple[Number, ...] = ()
    tables: tuple[str, ...] = ()
    """Names of special tables (see TABLES)."""
    part: str = ""


def _sec(part: str, id: str, number: str, title: str, text: str, figures=(), numbers=(), tables=()) -> Section:
    return Section(id, number, title, text, tuple(figures), tuple(numbers), tuple(tables), part)


def _part_a_p(*extra: tuple[str, str]) -> P:
    return PART_A_P + tuple(extra)


PART_B = (
    _sec("B", "b-denoiser", "B.1", "Single-step denoiser",
         "A UNet learns to map a noisy digit z = x + σε straight back to x with an L2 loss, trained at one noise "
         "level σ. The grid shows the noising process over σ; the denoised test digits show how far one "
         "network call gets after the first and the last snapshot epoch, and the sweep shows how it copes "
         "with noise levels it was not trained on.",
         [Fig("denoiser", names.NOISING_GRID, "Noising process", "The same test digits with z = x + σε at each σ.",
              (("sigma_sweep", "σ"), ("num_show", "digits"), ("seed", "seed"))),
          Fig("denoiser", names.LOSS_CURVE, "Training loss", "L2 loss ‖D(z) − x‖² per optimizer step (log scale).",
              DENOISER_P, pixelated=False),
          Fig("denoiser", names.DENOISED_TEST, "Denoised test digits after the snapshot epochs",
              "Rows: clean, noisy at the training σ, denoised; one panel per snapshot epoch.",
              DENOISER_P + (("plan.snapshot_epochs", "snapshot epochs"),)),
          Fig("denoiser", names.OOD_SIGMA_SWEEP, "Out-of-distribution noise levels",
              "The trained denoiser on noise levels it never saw: pairs of noisy and denoised rows per σ.",
              DENOISER_P + (("sigma_sweep", "σ sweep"),))],
         [Number("final training loss (last epoch mean)", "denoiser", names.FINAL_LOSS),
          Number("training time", "denoiser", names.TRAIN_SECONDS, "seconds")],
         ["sigma_table"]),
    _sec("B", "b-time-ddpm", "B.2", "Time-conditioned DDPM",
         "The UNet now predicts the noise ε in x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, with t/T fed in through "
         "fully-connected blocks; sampling runs the DDPM update from pure noise for t = T…1.",
         [Fig("time_ddpm", names.LOSS_CURVE, "Training loss", "‖ε_θ(x_t, t) − ε‖² per optimizer step (log scale).",
              TIME_P, pixelated=False),
          Fig("time_ddpm", names.SNAPSHOT_SAMPLES, "Samples after the snapshot epochs",
              "Digits drawn from pure noise with the model as it was after each snapshot epoch.",
              TIME_P + (("plan.snapshot_epochs", "snapshot epochs"),)),
          Fig("sample_time_ddpm", names.FINAL_SAMPLES, "Final samples", "Samples from the finished model.",
              TIME_SAMPLE_P),
          Fig("sample_time_ddpm", names.TRAJECTORY, "Denoising trajectory",
              "Each row follows one sample from noise (left) to digit (right).", TIME_SAMPLE_P, wide=True),
          Fig("sample_time_ddpm", names.GIF_PATTERN, "Denoising, animated", "The whole grid denoising, as a GIF.",
              TIME_SAMPLE_P)],
         [Number("final training loss", "time_ddpm", names.FINAL_LOSS),
          Number("training time", "time_ddpm", names.TRAIN_SECONDS, "seconds")]),
    _sec("B", "b-class-ddpm", "B.3", "Class-conditioned DDPM",
         "The digit enters as a one-hot vector (dropped with probability p_uncond so the same network is also "
         "unconditional); samples use classifier-free guidance ε = ε_u + γ(ε_c − ε_u).",
         [Fig("class_ddpm", names.LOSS_CURVE, "Training loss", "Noise-prediction loss per optimizer step (log scale).",
              CLASS_P, pixelated=False),
          Fig("class_ddpm", names.SNAPSHOT_SAMPLES, "Samples of every digit after the snapshot epochs",
              "One row per requested digit, with classifier-free guidance.",
              CLASS_P + (("samples_per_class", "per digit"), ("plan.snapshot_epochs", "snapshot epochs"))),
          Fig("sample_class_ddpm", names.FINAL_SAMPLES, "Final samples", "Every digit from the finished model.",
              SAMPLE_P),
          Fig("sample_class_ddpm", names.TRAJECTORY, "Denoising trajectory",
              "Rows follow single samples from noise to digit.", SAMPLE_P, wide=True),
          Fig("sample_class_ddpm", names.GIF_PATTERN, "Denoising, animated", "The whole grid denoising, as a GIF.",
              SAMPLE_P)],
         [Number("final training loss", "class_ddpm", names.FINAL_LOSS),
          Number("training time", "class_ddpm", names.TRAIN_SECONDS, "seconds")]),
    _sec("B", "b-evaluation", "B.4", "Evaluation by an independent judge",
         "A small CNN classifier, trained apart from the diffusion models, reads the samples: how often a "
         "class-conditioned sample is the digit that was asked for, and the Fréchet distance between samples "
         "and real held-out digits in the judge's feature space. The floor is the distance between as many "
         "real training digits and the same held-out set: what a perfect generator would score.",
         [Fig("evaluation", names.JUDGED_SAMPLES, "Judged samples",
              "Class-conditioned samples, one row per requested digit, with how many the judge read correctly.",
              (("num_samples", "samples per model"), ("judge.epochs", "judge epochs"), ("judge.width", "judge width")))],
         [Number("judge accuracy on held-out real digits", "evaluation", names.JUDGE_HELDOUT_ACCURACY, "percent"),
          Number("class agreement (sample judged as the requested digit)", "evaluation", names.agreement("class"), "percent"),
          Number("judge's mean confidence in the requested digit", "evaluation", names.confidence("class"), "percent"),
          Number("evaluation time (judge training included)", "evaluation", names.EVAL_SECONDS, "seconds")],
         ["frechet_table", "agreement_table", "digit_share_table"]),
)

PART_A = (
    _sec("A", "a-sample-steps", "A.0", "Sampling at several step counts",
         "Each condition sampled with fewer and more denoising steps, with classifier-free guidance.",
         [Fig("part_a/sample_steps", names.SAMPLE_STEPS + "*", "Samples by number of inference steps",
              "Rows: number of steps; columns: condition.",
              _part_a_p(("num_inference_steps", "steps"), ("prompts", "conditions"), ("guidance", "guidance γ")))]),
    _sec("A", "a-forward", "A.1.1–1.3", "Forward process, Gaussian blur and one-step denoising",
         "A test image noised to x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε at three timesteps, then cleaned up by the best "
         "Gaussian blur (a classical filter) and by one call of the diffusion model (x̂₀ from its noise estimate).",
         [Fig("part_a/denoise", names.FORWARD_BLUR_ONE_STEP, "Forward process, blur and one-step",
              "Rows: noisy x_t, best Gaussian blur, one-step estimate; columns: timestep.",
              _part_a_p(("forward_timesteps", "t"), ("blur_sigmas", "blur σ")))]),
    _sec("A", "a-iterative", "A.1.4", "Iterative denoising compared",
         "Starting from the noisy image at strided step i_start, the model denoises step by step along the "
         "strided schedule; the result is compared with one-step denoising and blurring of the same image. "
         "From the spec's i_start = 10 (t = 690 of IF's T = 1000; t = 207 of the MNIST model's T = 300) little "
         "of the original survives the noise, and the model generates rather than restores: it lands on a "
         "plausible image, for MNIST often another digit, so its result can be further from the original (a "
         "higher MSE) than the blurry one-step estimate, which averages over every image the noise could hide. "
         "When that happens, the last figure starts again from the noisiest later i_start at which the "
         "iterative result is at least as close to the original as one-step denoising: from there it restores.",
         [Fig("part_a/denoise", names.ITERATIVE_STEPS, "Iterative denoising, every 5th step",
              "The image along the strided schedule, left to right.", _part_a_p(("i_start", "i_start"),
                                                                                ("t_start", "t_start"))),
          Fig("part_a/denoise", names.DENOISE_COMPARED, "Iterative vs one-step vs blur",
              "The original, its noisy version and the three estimates.", _part_a_p(("i_start", "i_start"),
                                                                                    ("t_start", "t_start"))),
          Fig("part_a/denoise", names.DENOISE_RESTORING, "Where the iterative loop still restores",
              "The same comparison from the noisiest later i_start at which the iterative result is at least "
              "as close to the original as one-step denoising.",
              _part_a_p(("restore_i_start", "i_start"), ("restore_t_start", "t_start")), optional=True)],
         [Number("MSE, iterative", "part_a/denoise", names.MSE_ITERATIVE),
          Number("MSE, one-step", "part_a/denoise", names.MSE_ONE_STEP),
          Number("MSE, best blur", "part_a/denoise", names.MSE_BLUR),
          Number("MSE, iterative, from the i_start where it restores", "part_a/denoise", names.RESTORE_MSE_ITERATIVE),
          Number("MSE, one-step, from the same i_start", "part_a/denoise", names.RESTORE_MSE_ONE_STEP)]),
    _sec("A", "a-sample", "A.1.5", "Sampling from pure noise",
         "i_start = 0: the iterative loop started from pure noise, without guidance.",
         [Fig("part_a/sample", names.SAMPLES_UNGUIDED + "*", "Unguided samples", "Samples from pure noise.",
              _part_a_p(("num_samples", "samples")))]),
    _sec("A", "a-cfg", "A.1.6", "Classifier-free guidance",
         "ε = ε_u + γ(ε_c − ε_u): extrapolating past the conditional estimate trades diversity for quality.",
         [Fig("part_a/cfg", names.SAMPLES_CFG + "*", "Samples with classifier-free guidance", "One row per condition.",
              _part_a_p(("conditions", "conditions"), ("guidance", "γ"), ("num_samples", "per condition")))]),
    _sec("A", "a-sdedit", "A.1.7", "SDEdit: the test image and hand drawings",
         "A real image is noised to strided step i_start and denoised with guidance: small i_start leaves "
         "little of it, large i_start stays close. The same on hand-drawn images.",
         [Fig("part_a/sdedit", names.SDEDIT + "*", "SDEdit", "Rows: the test image, then each user image; columns: i_start.",
              _part_a_p(("i_starts", "i_start"), ("user_images", "user images"), ("guidance", "guidance γ")))]),
    _sec("A", "a-inpaint", "A.1.7.2", "Inpainting",
         "After every step the pixels outside the mask are reset to the original, noised to the current "
         "timestep, so only the masked region gets new content.",
         [Fig("part_a/inpaint", names.INPAINT + "*", "Inpainting", "Original, mask (white = new content), kept pixels, result.",
              _part_a_p(("mask", "mask"), ("guidance", "guidance γ")), framed=True)],
         [Number("largest change outside the mask", "part_a/inpaint", names.UNMASKED_MAX_ABS_CHANGE)]),
    _sec("A", "a-i2i", "A.1.7.3", "Text-conditioned image-to-image",
         "SDEdit guided by a different condition: the test image pulled towards another prompt (digit).",
         [Fig("part_a/i2i", names.IMAGE_TO_IMAGE + "*", "Image-to-image", "Rows: condition; columns: i_start.",
              _part_a_p(("conditions", "conditions"), ("i_starts", "i_start"), ("guidance", "guidance γ")))]),
    _sec("A", "a-anagram", "A.1.8", "Visual anagrams",
         "Two noise estimates, one of the image and one of its transformed view with another condition, are "
         "averaged at every step: the result reads as one thing upright and another when transformed.",
         [Fig("part_a/anagram", names.ANAGRAM_PREFIX + "*", "Visual anagrams", "The image, then its transformed view.",
              _part_a_p(("anagrams", "anagrams"), ("guidance", "guidance γ")))]),
    _sec("A", "a-hybrid", "A.1.9", "Hybrid images",
         "Low frequencies of one condition's noise estimate plus high frequencies of another's: one reading "
         "up close, another from afar (the small version).",
         [Fig("part_a/hybrid", names.hybrid("*", "full"), "Hybrid image, full size", "Seen up close: the high frequencies.",
              _part_a_p(("hybrids", "low / high"), ("kernel_size", "kernel"), ("sigma", "σ"),
                        ("guidance", "guidance γ"))),
          Fig("part_a/hybrid", names.hybrid("*", "small"), "Hybrid image at ¼ size (enlarged)",
              "Seen from afar: the low frequencies.", _part_a_p(("hybrids", "low / high")))]),
)

SECTIONS: tuple[Section, ...] = PART_A + PART_B
"""Part A then Part B, as the write-up orders them; facts come first on the page."""
FACTS_ID = "facts"
SECTION_IDS: tuple[str, ...] = (FACTS_ID,) + tuple(s.id for s in SECTIONS)

STAGE_ORDER = (*names.part_b_run_order(), names.PART_A_RUN)
PART_A_ORDER = PART_A_SECTIONS
STEPPED_LABEL = "epoch"
