"""ONNX export (installed as ``rt_portrait.export``).

Reserved for exporting the generator UNet to ONNX for ONNX Runtime and TensorRT; the
learning-free path exports nothing yet.
"""
