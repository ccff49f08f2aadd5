"""The annotate step: a whole dataset annotated by a pushed model on Apache Beam (RunInference), a row per face."""
