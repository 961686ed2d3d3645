"""The HTTP API's implementation; import it through ``whisper_modal.server``.

This ``__init__`` imports nothing, so a submodule's lazy imports cannot lead back here.
"""
