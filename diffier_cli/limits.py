"""Bounds on what diffier reads and plans, so that hostile or mistaken input costs bounded time and
memory and ends as a one-line error instead of a traceback or an exhausted machine.

Each bound is far above what a real run needs and says why it is where it is.
"""

from __future__ import annotations

# Items one invocation plans (prompt lines × --num-images, images, text lines). Planning costs
# about 60 µs and 1 kB an item on a 2-core machine (names, clobber checks), so 100 000 items plan in
# about 6 s and 100 MB; larger jobs are split into several files or runs.
MAX_ITEMS = 100_000

# A file name's bytes: 255 is the limit of ext4, XFS, btrfs, APFS and NTFS, and the temporary file
# an output is first written to (`.NAME.XXXXXXXX.part`) adds 15.
MAX_NAME_BYTES = 240

# Nesting depth of any JSON diffier reads (records, .jsonl prompt lines). Its own records nest
# at most 6 deep; Python's parser would recurse until RecursionError on a deeply nested file.
MAX_JSON_DEPTH = 32

# Digits of an integer in that JSON: Python's default bound (sys.int_info.default_max_str_digits),
# checked by diffier itself because PYTHONINTMAXSTRDIGITS=0 lifts Python's, and converting one
# 16 MB integer then costs minutes (the cost grows with the square of the digits). diffier's own
# integers (seeds, counts, sizes) have at most 20 digits.
MAX_INT_DIGITS = 4300

# Characters of a record's `command` and `job.id`, which `diffier manifest` prints in its one-line
# summaries: job ids are 12 hex digits (jobs.job_id), commands are names like `t2i` or `eval sr`.
MAX_LABEL_CHARS = 64

# Bytes of a record read from a file: a PNG text chunk (Pillow refuses compressed chunks over
# 1 MB, ImageFile.SAFEBLOCK) or a WAV's JSON sidecar. diffier's largest records (a long text's
# per-utterance, per-step statistics) are well under 1 MB.
MAX_RECORD_BYTES = 16 * 2**20

# Bytes of a prompts file or of the text given to tts: MAX_ITEMS lines of 2 kB each with room to spare.
MAX_TEXT_BYTES = 256 * 2**20
