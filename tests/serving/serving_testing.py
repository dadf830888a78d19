"""Settings shared by the serving tests."""

from makevl.serving.batching import BatchSettings

# For tests that assert "never 5xx" but are not about overload: a search is never shed
# for waiting (the 200 ms default deadline is a load-shedding choice, and a stalled CI
# machine can exceed it, which schemathesis then reports as a server error).
NO_SHEDDING = BatchSettings(deadline_ms=600_000)
