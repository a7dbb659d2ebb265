"""Test spaces: the TestSpace API, the mesh renderer, procedural apartments and format loaders."""
