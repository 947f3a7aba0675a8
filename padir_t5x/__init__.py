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
