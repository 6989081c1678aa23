"""diffier: pretrained diffusion models with and without the DiffIER inference-time correction.

The library's public names are few (`__all__`): `DiffIERScheduler`, a drop-in for any diffusers
pipeline's scheduler, and `refine_eps`, the correction itself. They load on first use, so that
`import diffier_cli` and `diffier --help` stay instant; torch and diffusers are imported inside
the commands that need them.
"""

__version__ = "0.1.0"
__all__ = ["DiffIERScheduler", "refine_eps", "__version__"]


def __getattr__(name: str):
    """The public names, imported when first asked for (PEP 562)."""
    if name == "DiffIERScheduler":
        from diffier_cli.library import DiffIERScheduler

        return DiffIERScheduler
    if name == "refine_eps":
        from diffier_cli.refine import refine_eps

        return refine_eps
    raise AttributeError(f"module 'diffier_cli' has no attribute {name!r}")
