"""The publish step: a copy of one step's output at a URI chosen in advance, for runs that import it."""
