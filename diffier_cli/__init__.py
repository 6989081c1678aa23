"""diffier: pretrained diffusion models with and without the DiffIER inference-time correction.

Nothing heavy is imported here so that `diffier --help` stays instant; torch and diffusers
are imported inside the commands that need them.
"""

__version__ = "0.1.0"
