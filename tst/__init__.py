"""Test-Space Training: specialize a vision model to the one space it will be deployed in."""

__version__ = "0.1.0"
