"""Inference: the `Decoder` seam (decoders.py) and what decodes behind it.

PaDIR's length beam and refinement passes, the AR beam search, draft and verify, and their helpers.
"""
