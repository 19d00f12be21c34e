"""Flow matching for Wan-family DiTs: schedules, ODE solvers, guidance, image conditioning, noise.

Convention (DESIGN.md): sigma = 1 is noise, x_sigma = (1 - sigma) x0 + sigma eps, v = eps - x0,
x0 = x_sigma - sigma v, t = 1000 sigma. Pure PyTorch; never imports the DiT or the VAE.
"""
from .conditioning import (FirstFrameInjection, first_last_mask, first_last_pixel_video, i2v_concat,
                           i2v_mask, i2v_pixel_mask, i2v_pixel_video)
from .guidance import GuidedVelocity
from .noise import initial_noise, noise_latent
from .sampler import sample, sample_stages
from .schedules import flow_sigmas, shift_sigma, sigma_curve, training_table
from .solvers import SOLVERS, NonFiniteModelOutput, SamplingCancelled, get_solver
from .stages import WAN22_BOUNDARY, Stage, StagedVelocity, step_boundary, switch_step

__all__ = [
    "FirstFrameInjection", "first_last_mask", "first_last_pixel_video", "i2v_concat", "i2v_mask", "i2v_pixel_mask", "i2v_pixel_video",
    "GuidedVelocity", "initial_noise", "noise_latent", "sample", "flow_sigmas", "shift_sigma",
    "sigma_curve", "training_table", "SOLVERS", "NonFiniteModelOutput", "SamplingCancelled",
    "get_solver", "sample_stages", "Stage", "StagedVelocity", "WAN22_BOUNDARY", "step_boundary",
    "switch_step",
]
