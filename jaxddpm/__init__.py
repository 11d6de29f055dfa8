"""jaxddpm: class-conditional DDPM / DDIM with classifier-free guidance in JAX."""

from jaxddpm import diffusion, schedules
from jaxddpm.attributes import attribute_labels
from jaxddpm.checkpoint import load_checkpoint
from jaxddpm.evaluate import evaluate_checkpoint
from jaxddpm.loop import train_and_evaluate
from jaxddpm.sampling import make_sampler, sample_loop

__all__ = ["attribute_labels", "diffusion", "schedules", "load_checkpoint", "evaluate_checkpoint",
           "train_and_evaluate", "make_sampler", "sample_loop"]
__version__ = "0.1.0"
