"""The model core: the network, its layers and configs, corruption, the losses and training.

No t5x here; the checkpoint format and the one loader of core and T5X checkpoints live here too.
"""
