"""StableSR (Wang et al. 2023) pieces that diffusers lacks, with the official key names."""
