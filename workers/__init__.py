"""The inference runtime: engines, device and precision, the supervisor, audio post-processing.

The only package that imports torch or onnxruntime (house rule 1).
"""
