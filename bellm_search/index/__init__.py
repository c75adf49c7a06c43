"""The vector index: pure heuristics (``factory``), the FAISS index (``faiss_index``), exact
re-ranking (``rerank``) and the check of settings a user gives (``validate``).

Importing this package imports no faiss; ``faiss_index`` and ``validate`` do."""
