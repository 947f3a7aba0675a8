"""The T5X adapter and job runner: `PadirModel` (models.py, gin's `padir_t5x.models`), T5X
checkpoint restoring (restore.py) and the t5x train/infer/eval subprocess jobs (jobs.py).

Only models.py and restore.py import t5x, and restore.py only inside its functions.
"""
