"""Helpers shared by more than one step (storage URIs, the AU label constants, CLI output)."""
