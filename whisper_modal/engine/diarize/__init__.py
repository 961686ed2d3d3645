"""Speaker diarization (``pipeline``: who spoke when, applied to a finished transcript).

This ``__init__`` imports nothing, so importing any submodule cannot lead back here.
"""
