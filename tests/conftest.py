"""Shared test set-up: the tests' own helper modules under tests/data/ are importable by name."""
import os
import sys

# tests/ is not a package (pytest's rootdir-relative imports); the tiny SavedModel builder that
# the evaluate, push and predict tests share lives once, in tests/data/evaluate/tiny_model.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "evaluate"))
