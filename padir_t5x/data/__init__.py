"""Data and evaluation: text and shard files, tf.data/SeqIO pipelines, metrics, the shared corpus.

Only pipelines.py imports TensorFlow; textio reads and writes files without it.
"""
