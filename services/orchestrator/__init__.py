"""The orchestrator service: decompose, delegate, review loop, conflicts, recovery, aggregation."""
