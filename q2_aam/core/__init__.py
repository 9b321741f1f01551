"""The AAM torch core: tokenizer, model, data batching, losses, training engine.

Imports no QIIME 2, so it can be used on its own from Python.
"""
