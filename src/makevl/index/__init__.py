"""The product index: build, update and search indexes of encoded products."""
