"""Grad-TTS (Popov et al. 2021) and HiFi-GAN, ported from the official inference code."""
