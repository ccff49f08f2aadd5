"""The annotate step: a whole dataset annotated by a pushed model on Apache Beam (RunInference), one row per image and face."""
