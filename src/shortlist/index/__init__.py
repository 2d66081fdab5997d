"""Item re-embedding and the FAISS index built over the item embeddings."""
