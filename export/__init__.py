"""Deployment path of the zoo: ONNX graphs (``export.onnx``), verification (``export.verify``), TensorRT engines
with the zoo's scan plugins (``export.trt``) and Triton model repositories (``export.triton``).

``export.plugin_spec`` is the single source of truth for the scan nodes' names, I/O and plugin attributes.
"""
