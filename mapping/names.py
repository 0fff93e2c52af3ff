"""Names shared by every layer that must stay importable without torch (the query syntax,
the command line)."""
from __future__ import annotations

FULL = "full"  # the vector of the whole representation, beside one vector per property
