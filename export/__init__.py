"""ONNX and TensorRT export of the generator (installed as ``rt_portrait.export``).

The command-line layer of ``rt-portrait export onnx`` and ``rt-portrait export tensorrt``
(:mod:`.cli`); the graph, the exporter and the builder live in ``rt_portrait.engines`` (the
generator stage), so that the runtime's resolver can export and build at start-up too.
"""
