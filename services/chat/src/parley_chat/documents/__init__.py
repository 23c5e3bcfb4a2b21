"""Documents a user keeps for retrieval (RAG): chunked, embedded in-process, searched per owner."""
