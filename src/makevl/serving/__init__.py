"""The search server (FastAPI) and its web page."""
