"""The faces CLI: find the largest face, rotate it so the eyes are level, crop it with a margin (components.common.facefinder does it)."""
