"""The convert step."""
