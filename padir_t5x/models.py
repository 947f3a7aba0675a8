"""`padir_t5x.models`: the name by which gin files and users reach the T5X adapter.

The adapter itself is padir_t5x/t5x_adapter/models.py; this module keeps its documented name
working (gin's `from padir_t5x import models` and `models.PadirModel`, the `padir_t5x.models`
that t5x run configs record). Importing it imports t5x.
"""

from padir_t5x.t5x_adapter.models import ADDITIONAL_LOGICAL_AXIS_RULES
from padir_t5x.t5x_adapter.models import PadirModel
from padir_t5x.t5x_adapter.models import config_from_fields
from padir_t5x.t5x_adapter.models import load_for_inference
from padir_t5x.t5x_adapter.models import model_from_gin
from padir_t5x.t5x_adapter.models import split_decoder_params

__all__ = [
    "PadirModel",
    "model_from_gin",
    "load_for_inference",
    "ADDITIONAL_LOGICAL_AXIS_RULES",
    "config_from_fields",
    "split_decoder_params",
]
