"""The spec's numbers as plain Python (no pydantic): the one place they are written.

Each constant names its section of the spec (/work/shared/SPEC.md; the course's assignment). The typed
configs (`difflab.config`) take their defaults from here, and the math modules (`ddpm`, `edits/*`)
read them directly, so a course value is never written twice.
"""

from __future__ import annotations

# ---- Part B (MNIST, pixels in [0, 1], 1x28x28) ----

COURSE_TRAIN_IMAGES = 60_000
"""The size of the MNIST training set the course's epoch counts were written for."""

# Part B 1. Single-step denoiser: D = 128, batch 256, 5 epochs, Adam lr 1e-4, sigma 0.5; figures after epochs 1, 5.
DENOISER_HIDDEN = 128
DENOISER_BATCH_SIZE = 256
DENOISER_EPOCHS = 5
DENOISER_LR = 1e-4
DENOISER_SNAPSHOT_EPOCHS = (1, 5)
DENOISER_SIGMA = 0.5
SIGMA_SWEEP = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
"""Part B 1: the sigmas the noising is visualised (and the denoiser evaluated) at."""

# Part B 2. DDPM, time-conditioned: D = 64, batch 128, 20 epochs, Adam lr 1e-3, ExponentialLR with
# gamma = 0.1^(1/epochs); samples after epochs 5 and 20. (Part B 3 trains the class DDPM the same way.)
DDPM_HIDDEN = 64
DDPM_BATCH_SIZE = 128
DDPM_EPOCHS = 20
DDPM_LR = 1e-3
DDPM_SNAPSHOT_EPOCHS = (5, 20)
DDPM_LR_FINAL_FACTOR = 0.1
"""Part B 2: ExponentialLR gamma = lr_final_factor ** (1 / epochs), stepped once per epoch."""
NUM_TIMESTEPS = 300
"""Part B 2: T = 300."""
BETA1 = 1e-4
BETA2 = 0.02
"""Part B 2: beta linear from BETA1 to BETA2 over T steps."""

# Part B 3. DDPM, class-conditioned.
P_UNCOND = 0.1
"""Part B 3: the one-hot class is dropped to the zero vector with this probability while training."""
GUIDANCE = 5.0
"""Part B 3: classifier-free guidance gamma while sampling."""

# ---- Part A (a pretrained text-to-image pixel diffusion model; DeepFloyd IF) ----

PART_A_SEED = 180
"""Part A: the spec's seed for every Part A result."""
IF_STAGE1 = "DeepFloyd/IF-I-XL-v1.0"
IF_STAGE2 = "DeepFloyd/IF-II-L-v1.0"
"""Part A: the reference model's stage I (64x64) and stage II (upsampler to 256x256)."""
NEUTRAL_PROMPT = "a high quality photo"
"""Part A 1.5: the neutral prompt (1.6: the condition of the CFG samples)."""
UNCONDITIONAL_PROMPT = ""
"""Part A: the empty prompt is the unconditional embedding."""
NUM_INFERENCE_STEPS = (20, 50)
"""Part A 0: the (at least two) step counts the prompts are sampled at."""
FORWARD_TIMESTEPS = (250, 500, 750)
"""Part A 1.1: the forward process at t in {250, 500, 750} (on IF's T = 1000)."""
PART_A_STRIDE = 30
"""Part A 1.4: strided timesteps 990, 960, ..., 0 on IF's T = 1000."""
PART_A_I_START = 10
"""Part A 1.4: the iterative denoising starts at strided index 10."""
PART_A_SHOW_EVERY = 5
"""Part A 1.4: show every 5th step of the iterative denoising."""
PART_A_GUIDANCE = 7.0
"""Part A 1.6: classifier-free guidance gamma = 7."""
SDEDIT_I_STARTS = (1, 3, 5, 7, 10, 20)
"""Part A 1.7: SDEdit from strided step i_start in {1, 3, 5, 7, 10, 20}."""
HYBRID_KERNEL_SIZE = 33
HYBRID_SIGMA = 2.0
"""Part A 1.9: the hybrids' Gaussian low-pass filter (kernel 33, sigma 2)."""

PART_A_SECTIONS = ("sample_steps", "denoise", "sample", "cfg", "sdedit", "inpaint", "i2i", "anagram", "hybrid")
"""Part A's sections in the order the flow runs and the page shows them (each also an MLflow run name):
0 sampling at several step counts; 1.1-1.4 forward/blur/one-step/iterative; 1.5; 1.6; 1.7; 1.7.2; 1.7.3;
1.8; 1.9."""
