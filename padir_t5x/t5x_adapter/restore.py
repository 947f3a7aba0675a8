"""Trained T5X checkpoints outside t5x.train / t5x.infer: the model a run's gin config builds,
and its parameters restored as t5x.infer restores them (padir_t5x.core.loading reads T5X checkpoints
through these). Part of the T5X adapter with padir_t5x/t5x_adapter/models.py: t5x is imported inside
the functions, so that this module loads without it.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

PyTree = Any


def _capture_model(model=None):
  return model


def model_from_gin(gin_file: str) -> Any:
  """The `MODEL` a t5x run's gin config builds (e.g. the config.gin that t5x.train writes).

  The run's other bindings (train, datasets, partitioning) are parsed and ignored; the file's
  includes are searched from the repository root (the gin files' convention) and t5x's configs.
  Leaves gin cleared.
  """
  import __main__  # pylint: disable=g-import-not-at-top

  import gin  # pylint: disable=g-import-not-at-top
  from t5x import train as t5x_train  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(gin_file):
    raise FileNotFoundError(f"gin config not found: {gin_file}")
  # A run's config.gin binds `__main__.train` (`import __main__ as train_script`).
  if not hasattr(__main__, "train"):
    __main__.train = t5x_train.train
  repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for path in (repo_root, os.path.dirname(os.path.dirname(t5x_train.__file__))):
    gin.add_config_file_search_path(path)
  gin.clear_config()
  try:
    configurable = gin.external_configurable(_capture_model, "padir_capture_model")
    with gin.unlock_config():
      gin.parse_config_files_and_bindings(
          [gin_file], ["padir_capture_model.model = %MODEL"], finalize_config=False
      )
    model = configurable()
  except (ValueError, KeyError) as e:
    raise ValueError(f"{gin_file}: cannot build its MODEL ({e})") from None
  finally:
    gin.clear_config()
  if model is None:
    raise ValueError(f"{gin_file} defines no MODEL")
  return model


def load_for_inference(checkpoint_path: str, gin_file: str | None = None) -> tuple[Any, PyTree]:
  """(model, params) of a t5x checkpoint_N directory, as t5x.infer restores them.

  Args:
    checkpoint_path: a `checkpoint_N` directory of a t5x model directory.
    gin_file: the gin config that builds the model; default the `config.gin` that t5x.train
      wrote into the model directory (the checkpoint's parent).
  """
  from t5x import partitioning  # pylint: disable=g-import-not-at-top
  from t5x import utils  # pylint: disable=g-import-not-at-top

  checkpoint_path = os.path.abspath(checkpoint_path)
  gin_file = gin_file or os.path.join(os.path.dirname(checkpoint_path), "config.gin")
  model = model_from_gin(gin_file)
  config = model.module.config
  input_shapes = {
      "encoder_input_tokens": (1, config.max_input_length),
      "decoder_input_tokens": (1, config.max_target_length),
  }
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  initializer = utils.TrainStateInitializer(
      optimizer_def=None,  # inference: no optimizer state
      init_fn=model.get_initial_variables,
      input_shapes=input_shapes,
      input_types={k: jnp.int32 for k in input_shapes},
      partitioner=partitioner,
  )
  # As t5x.infer: not strict (the optimizer state is dropped); orbax for what t5x.train writes
  # by default (a _CHECKPOINT_METADATA file), the legacy checkpointer otherwise.
  restore = utils.RestoreCheckpointConfig(
      path=checkpoint_path, mode="specific", dtype="float32", strict=False
  )
  use_orbax = os.path.exists(os.path.join(checkpoint_path, "_CHECKPOINT_METADATA"))
  train_state, _ = utils.create_checkpoint_manager_and_restore(
      initializer, partitioner, restore, checkpoint_path, None, use_orbax=use_orbax
  )
  if train_state is None:
    raise FileNotFoundError(f"no t5x checkpoint could be restored from {checkpoint_path}")
  return model, train_state.params
