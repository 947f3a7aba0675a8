"""Research code behind the docs' experiments: the Ising-model experiments (ising/, run as
`python -m padir_t5x.research.ising`), the attention analysis of stutter and the training cost.
"""
