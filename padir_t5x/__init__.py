"""padir-t5x: non-autoregressive translation by Parallel Decoding with Iterative Refinement.

The applications (translate, quickstart, distill, em, export, vocab, corpus) and their plumbing sit
at the top; core/ holds the model and its training, decoders/ inference, data/ data and metrics,
t5x_adapter/ the T5X adapter and job runner, research/ the Ising, analysis and cost code. Only
t5x_adapter/ imports t5x; gin files and users reach the adapter as `padir_t5x.models`.
"""

# Special token ids, shared by the vocabulary builder, the corruption, the network and decoding.
# They follow seqio/T5 SentencePiece conventions (pad 0, EOS 1, UNK 2) and add one [MASK] piece,
# which `padir_t5x.vocab` reserves as the first user-defined symbol so that it always gets id 3.
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MASK_ID = 3
# Random replacement tokens (corruption, random initial decoder input) are drawn from
# [FIRST_ORDINARY_ID, real vocabulary size): never a special id.
FIRST_ORDINARY_ID = 4

__version__ = "0.1.0"


def _install_moved_modules() -> None:
  """Makes the module paths that earlier T5X runs recorded import their modules' new homes.

  t5x.train writes the gin files' imports into each run's config.gin, and before the subpackages
  those were `from padir_t5x import network` and `from padir_t5x import schedules`; translate,
  export and t5x.infer read that config.gin back. Each old path imports as the very module at its
  new home (no copy), and only when asked for: the package itself still imports nothing.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import importlib.abc  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  moved = {
      "padir_t5x.network": "padir_t5x.core.network",
      "padir_t5x.schedules": "padir_t5x.core.schedules",
  }

  class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new home."""

    def find_spec(self, fullname, path=None, target=None):
      del path, target
      return importlib.util.spec_from_loader(fullname, self) if fullname in moved else None

    def __init__(self):
      self.home_specs = {}

    def create_module(self, spec):
      module = importlib.import_module(moved[spec.name])
      self.home_specs[spec.name] = module.__spec__  # the import system overwrites __spec__ next
      return module

    def exec_module(self, module):
      module.__spec__ = self.home_specs[module.__spec__.name]

  if not any(type(f).__name__ == "MovedModules" for f in sys.meta_path):
    sys.meta_path.insert(0, MovedModules())


_install_moved_modules()
