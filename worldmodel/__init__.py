"""worldmodel: controllable multi-view video world models for robot manipulation."""

__version__ = "0.1.0"
