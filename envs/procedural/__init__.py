"""Procedural apartments: the embedded default space, one different apartment per seed."""
