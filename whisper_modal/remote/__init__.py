"""Code that runs inside the Modal app's containers, and what shapes the deployed app.

``whisper_modal.app`` holds only Modal declarations (images, volume, classes, functions)
whose bodies call into this package:

- ``deployment``: the deploy settings baked into the images, the pinned packages, the
  images' environments, the warm-hours window (no ``modal`` import: the CLI reads it);
- ``context``: what container code asks of Modal at run time (the job id, the job book's
  Dict, the GPU class) and the environment it reads; tests swap in their own;
- ``runtime``: the GPU classes' enter hooks, one request, a packed batch, the request log;
- ``health``: a container's named checks; ``maintenance``: prefetch and the warm-pool cron;
- ``orchestrator``: a submitted long-audio job fanned out over GPU inputs (on CPU);
- ``web``: the web function's ASGI app (the HTTP API).
"""
