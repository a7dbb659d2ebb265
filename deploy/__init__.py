"""The deploy stage (not implemented yet)."""
