"""Backbone adapters: one per pretrained model family, each filling in `diffier_cli.sampling.Backbone`."""
