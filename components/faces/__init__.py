"""The face step: find the largest face, rotate it so the eyes are level, crop it with a margin (convert and predict use it)."""
