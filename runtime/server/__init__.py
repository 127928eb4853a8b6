"""``sdlite serve``: an HTTP server (AUTOMATIC1111 and OpenAI-shaped APIs) with dynamic batching.

Routes (``app.py``):

- ``POST /sdapi/v1/txt2img``, ``POST /sdapi/v1/img2img``: AUTOMATIC1111's API (prompt,
  negative_prompt, steps, cfg_scale, sampler_name [+ scheduler "Karras"/"Exponential"], seed
  (-1: random), width, height, batch_size, n_iter (a multiplier: batch_size x n_iter images, seeds
  seed, seed+1, ...), init_images (base64, "data:" prefix optional), denoising_strength,
  force_task_id) -> ``{"images": [base64 PNG with the "parameters" chunk], "parameters": the
  request, "info": JSON text with all_seeds, infotexts, ...}``.  Left-out steps, cfg_scale,
  sampler_name, width and height take the model's values (its preset and native size), not
  A1111's 512 px.  Other A1111 fields are accepted and ignored.
- ``POST /v1/images/generations``: OpenAI's shape (prompt, n <= 10, size "WxH",
  response_format "b64_json" only: "url" is a 422, the server keeps no files) -> ``{"created",
  "data": [{"b64_json", "revised_prompt"}]}``; sdlite extensions: negative_prompt, seed, steps,
  guidance_scale, sampler.
- ``GET /sdapi/v1/progress[?id_task=][&skip_current_image=true]`` (``current_image``: a base64
  PNG of the job's latest live preview, every ``--preview-every`` steps; ``previews.py``),
  ``POST /sdapi/v1/interrupt?id_task=`` (one task; its client gets 409), ``GET /sdapi/v1/samplers``,
  ``/sdapi/v1/sd-models``, ``/sdapi/v1/options``; ``GET /health``; ``GET /metrics``
  (Prometheus); ``GET /`` the page.
- ``<lora:NAME:WEIGHT>`` tags in prompts and negative prompts name files of ``--lora-dir``;
  ``GET /sdapi/v1/loras``, ``POST /sdapi/v1/refresh-loras``; ``--embeddings-dir``'s textual
  inversions are loaded at start, ``GET /sdapi/v1/embeddings`` (``extras.py``).  Requests with
  different LoRA sets never share a model call.

Status codes: 422 names the field (FastAPI's body: ``detail[].loc``), 429 with Retry-After when
``--queue`` requests already wait, 413 for a body over ``--max-body-bytes``, 401 without the
``--api-key`` (``Authorization: Bearer KEY``, or HTTP Basic with KEY as password; ``GET /`` and
``GET /health`` stay open), 409 when interrupted, 500 when the model call fails (every request in
that batch).  A client that disconnects cancels its request (see ``batcher.py``).
"""
