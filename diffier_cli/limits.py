"""Bounds on what diffier reads and plans, so that hostile or mistaken input costs bounded time and
memory and ends as a one-line error instead of a traceback or an exhausted machine.

Each bound is far above what a real run needs and says why it is where it is.
"""

from __future__ import annotations

# The bounds of the one reader of untrusted bytes and JSON, kept beside it (models/untrusted.py,
# which the model loaders use for their configs too) and listed here with the rest.
from models.untrusted import MAX_INT_DIGITS, MAX_JSON_DEPTH, MAX_RECORD_BYTES, MAX_TEXT_BYTES  # noqa: F401

# Items one invocation plans (prompt lines × --num-images, images, text lines). Planning costs
# about 60 µs and 1 kB an item on a 2-core machine (names, clobber checks), so 100 000 items plan in
# about 6 s and 100 MB; larger jobs are split into several files or runs.
MAX_ITEMS = 100_000

# Items a job's record may claim (`job.count`): `eval sr` writes two results per input.
MAX_JOB_COUNT = 2 * MAX_ITEMS

# A file name's bytes: 255 is the limit of ext4, XFS, btrfs, APFS and NTFS, and the temporary file
# an output is first written to (`.NAME.XXXXXXXX.part`) adds 15.
MAX_NAME_BYTES = 240


# Characters of a record's `command` and `job.id`, which `diffier manifest` prints in its one-line
# summaries: job ids are 12 hex digits (jobs.job_id), commands are names like `t2i` or `eval sr`.
MAX_LABEL_CHARS = 64


# Numeric options: every one has a finite range, checked before anything is loaded.
TRAINING_TIMESTEPS = 1000  # SD, StableSR and the gap benchmark are trained on T = 1000; Grad-TTS's paper goes up to 1000 steps
MAX_CFG = 100.0  # guidance scale ω; published settings stay under 30
MAX_ETA = 1.0  # DiffIER's η: past 0.5 descent already overshoots the fresh draw (ε̂ ← (1 − 2η) ε̂ + 2η n)
MAX_REFINE_ITERS = 1000  # DiffIER iterations a step; descent converges in 20–60 (README, Method)
MAX_IEC_ITERS = 100  # IEC's K; the official variants use 2 and 3
MAX_BATCH = 1024  # images per forward pass
MAX_SIDE = 8192  # pixels of a t2i side, an sr tile or pixel tile: far past what fits in one GPU's memory
MAX_SR_SCALE = 32.0  # sr's output/input ratio; StableSR is trained for 4×
MAX_SPEAKER = 65535  # a multi-speaker checkpoint's speaker index (LibriTTS has 247); checked against the file too

# Bytes of a whole output path: Linux's PATH_MAX (4096, with its terminating NUL).
MAX_PATH_BYTES = 4096

# Values one sweep takes (--sweep-*, gap --omegas): a grid's columns, each a full sampling run per row.
MAX_SWEEP_VALUES = 32

# gap: samples × classes × components × dimensions, the size of its largest intermediate tensor
# ([N, K·M, d] float64 distances to every component), 8 bytes each: 5e7 is 400 MB.
MAX_GAP_ELEMENTS = 50_000_000

# Seconds of audio in one WAV, estimated from its text before synthesis: its samples are held in
# memory whole (float32 and the encoded WAV), about 1.5 GB at this bound.
MAX_AUDIO_SECONDS = 3600
