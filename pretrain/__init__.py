"""The pretrain stage (not implemented yet)."""
