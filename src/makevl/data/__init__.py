"""Catalogs, query logs, validation, the demo shop and the fashion-mini preset."""
