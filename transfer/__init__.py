"""The transfer stage (not implemented yet)."""
