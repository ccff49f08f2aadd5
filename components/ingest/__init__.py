"""The ingest step: the EmotioNet sheet in, the manifest (contract 1) out."""
