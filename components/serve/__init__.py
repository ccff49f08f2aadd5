"""The model server: a pushed model behind Vertex AI's, KServe's and a raw-bytes HTTP interface, batching requests."""
