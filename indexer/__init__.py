"""The corpus side: reading collections, decoding images, writing vectors and FAISS indexes."""
