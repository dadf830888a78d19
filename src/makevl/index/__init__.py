"""The product index: build, update and search FAISS indexes of encoded products."""

import logging

# faiss logs which CPU build it loaded at INFO on import; not news for a user.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
