"""TensorRT engines (installed as ``rt_portrait.engines``).

Reserved for the generator's TensorRT backend (DESIGN.md: torch eager, torch.compile/CUDA
graphs, ONNX Runtime, TensorRT, chosen at start-up with a logged fallback). Nothing is built
here yet: the learning-free path has no network to compile. TensorRT is imported lazily
there, so the package never requires it.
"""
