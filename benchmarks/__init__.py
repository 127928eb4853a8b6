"""sdlite's benchmark suite: sdlite vs optimum's ONNX Runtime pipeline vs diffusers (PyTorch).

Run it with ``python -m benchmarks [--quick | --full] [--json PATH]``.  Deliberately empty of
imports: the cold-start workers import ``benchmarks.worker`` in a fresh process, and anything
imported here would be charged to the system under test.
"""
