"""python -m padir_t5x.research.ising --output_dir DIR [--quick] [--fit_method M]: both Ising
experiments.

Writes experiment{1,2}.{csv,png} and prints a summary.
"""

import dataclasses
import os

from padir_t5x import cli
from padir_t5x.research.ising import estimation
from padir_t5x.research.ising import experiments


@cli.entry_point
def main(argv=None) -> None:
  parser = cli.ArgumentParser(prog="python -m padir_t5x.research.ising", description=__doc__)
  parser.add_argument(
      "--output_dir",
      required=True,
      help="where experiment{1,2}.csv and experiment{1,2}.png are written",
  )
  parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
  parser.add_argument(
      "--fit_method",
      choices=estimation.FIT_METHODS,
      default="newton",
      help="optimiser of the k-MPLE in experiment 1 (estimation.FitConfig.method)",
  )
  args = parser.parse_args(argv)
  if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
    parser.error(f"argument --output_dir: not a directory: {args.output_dir}")
  if args.quick:
    config1, config2 = experiments.quick_configs()
  else:
    config1, config2 = experiments.Experiment1Config(), experiments.Experiment2Config()
  config1 = dataclasses.replace(
      config1, fit=dataclasses.replace(config1.fit, method=args.fit_method)
  )
  print(experiments.run_all(args.output_dir, config1, config2))


if __name__ == "__main__":
  main()
