"""`python -m t5x_mock_launcher NUM_EXAMPLES MODULE ARGS...`: runs `python -m MODULE ARGS...`
(t5x.train, t5x.eval, t5x.infer) with the WMT TFDS datasets of tasks/wmt.py mocked by
`tfds.testing.mock_data`.

tfds.testing.mock_data patches TFDS inside the process that enters it, and t5x runs in its own
process, so the mock has to be entered there: this launcher enters it, then runs the module as
`__main__` (runpy, as `python -m` does), so that t5x defines its flags and the gin files'
`import __main__ as train_script` find its `train` / `evaluate` / `infer`. Every split of
wmt14_translate/de-en, wmt16_translate/ro-en and wmt17_translate/zh-en then yields NUM_EXAMPLES
random examples (strings of ' abcdefghij', 10-19 characters; every split the same ones) and
nothing is downloaded; everything else (gin, seqio tasks, vocabularies, files such as
distilled shards) is real.

The mock also needs each builder's metadata (dataset_info.json) with its split sizes: without
it (tfds's MockPolicy.USE_CODE) the builder knows no splits, and seqio's sharded read in t5x
(`TfdsDataSource.list_shards`) fails with "splits is empty". The launcher writes that metadata
(one shard of NUM_EXAMPLES per split) into a temporary directory, as the real one would be after
`tfds build`, and mocks with MockPolicy.USE_FILES.

Not a test module: tests/test_wmt_gins_t5x.py puts tests/ on PYTHONPATH and runs it with
`python -m`.
"""

import os
import runpy
import sys
import tempfile


def write_wmt_metadata(data_dir: str, num_examples: int) -> list[str]:
  """dataset_info.json (and features.json) of every WMT builder of tasks/wmt.py under
  `data_dir`, each split one shard of `num_examples`; returns the builders' directories."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import naming
  from tensorflow_datasets.core import splits as splits_lib

  from tasks import wmt

  written = []
  for year, config, _ in wmt.WMT_PAIRS:
    builder = tfds.builder(wmt.tfds_name(year, config), data_dir=data_dir)
    template = naming.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=builder.name, filetype_suffix="tfrecord"
    )
    builder.info.set_splits(
        splits_lib.SplitDict(
            [
                splits_lib.SplitInfo(
                    name=split,
                    shard_lengths=[num_examples],
                    num_bytes=0,
                    filename_template=template,
                )
                for split in wmt.SPLITS
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    written.append(builder.data_dir)
  return written


def main(argv: list[str]) -> None:
  if len(argv) < 3 or not argv[1].isdigit() or int(argv[1]) < 1:
    sys.exit(f"usage: python -m t5x_mock_launcher NUM_EXAMPLES MODULE [ARGS...]; got {argv[1:]}")
  num_examples, module = int(argv[1]), argv[2]
  import tensorflow_datasets as tfds

  with tempfile.TemporaryDirectory(prefix="tfds_mock_") as data_dir:
    write_wmt_metadata(data_dir, num_examples)
    # The module sees the command line `python -m MODULE ARGS...` would give it.
    sys.argv = [module, *argv[3:]]
    with tfds.testing.mock_data(
        num_examples=num_examples, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
    ):
      runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main(sys.argv)
