"""Remembering by similarity: embeddings and FAISS vector memories. Knows no recommendation."""
