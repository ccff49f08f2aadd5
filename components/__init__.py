"""One package per pipeline step: logic (plain Python), component (KFP wrapper), __main__ (CLI)."""
