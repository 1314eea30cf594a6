"""The knowledge base: documents stored in Redis, ingested, indexed and searched with citations."""
