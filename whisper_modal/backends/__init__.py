"""Interchangeable backends behind one protocol (``base.Backend``)."""
