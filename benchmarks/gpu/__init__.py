"""SD 1.5 on a GPU: sdlite (fused fp16, CUDA EP) vs optimum's plain fp16 export vs diffusers fp16.

``python -m benchmarks.gpu [--small] [--phase all|torch|ort] [--out DIR] [--work DIR]``;
``benchmarks/gpu_run.sh`` sets up the GPU machine and calls it.  Two phases, because
onnxruntime-gpu and the pure-Python wheels don't fit one 64 MiB transfer together
(``shared/gpu/README.md``); ``all`` runs both in one go where everything is installed:

- ``torch``: build the models with PyTorch (random weights, the real SD 1.5 architecture, on the
  GPU), time diffusers fp16 (SDPA) alone on the machine, then export them (``sdlite export
  --dtype fp16 --target cuda``, optimum's plain ``--dtype fp16 --device cuda``) while diffusers
  draws the reference images for the correctness check.
- ``ort``: sdlite and optimum's ``ORTStableDiffusionPipeline`` on the CUDA execution provider,
  then the tiny models through the CUDA provider against diffusers' references.

Every heavy step runs in a child process with a time limit (a hang or crash costs that step
only), and the results file is rewritten after each step, so a run cut short still returns
figures.  ``--small`` runs the same plumbing on the tests' tiny model on the CPU.

Modules: ``config`` (what is measured, limits), ``procs`` (child processes, GPU memory meter),
``exports`` (the two exporters' commands, when a folder counts as exported), ``runner`` and
``tasks`` (what runs in the children), ``run`` (the phases, in the parent), ``report`` (tables).
Deliberately empty of imports: each child imports only what its task needs.
"""
