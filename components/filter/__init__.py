"""The filter step."""
