"""The tiny EM run the t5x-dependent EM tests launch (tests/test_em_t5x.py, test_em_kill_t5x.py).

Not a test module: imported by them (pytest puts tests/ on sys.path).
"""

import sys


def em_command(run_dir, train_files, limit, bindings=()):
  """`python -m padir_t5x.em` over gin/em/quickstart.gin: `limit` pairs of `train_files`, one
  round of 5 AR and 5 NAR steps, batch 16; `bindings` ('MACRO = value') go to both the teacher's
  and the student's t5x runs."""
  return [
      sys.executable,
      "-m",
      "padir_t5x.em",
      "--gin_file=gin/em/quickstart.gin",
      f"--run_dir={run_dir}",
      "--train_files",
      *train_files,
      f"--limit={limit}",
      "--rounds=1",
      "--ar_steps=5",
      "--nar_steps=5",
      "--num_candidates=2",
      "--beam_size=2",
      "--infer_batch_size=32",
      "--num_shards=2",
      *[f"--{side}_bindings={b}" for side in ("teacher", "student") for b in bindings],
      "--teacher_bindings=BATCH_SIZE = 16",
      "--student_bindings=BATCH_SIZE = 16",
  ]
