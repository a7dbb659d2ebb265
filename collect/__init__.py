"""The collect stage (not implemented yet)."""
