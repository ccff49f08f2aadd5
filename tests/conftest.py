"""Shared test set-up: the tests' own helper modules are importable by name."""
import os
import sys

# tests/ is not a package (pytest's rootdir-relative imports). The loopback servers and the GCS
# emulator helper live once in tests/integration/; the tiny SavedModel builder that the evaluate,
# push and predict tests share lives in tests/data/evaluate/tiny_model.py.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (os.path.join(_HERE, "integration"), os.path.join(_HERE, "data", "evaluate")):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)
