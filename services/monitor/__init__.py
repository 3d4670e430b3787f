"""The monitor service: heartbeats and metric events in; health, the spec's figures and alerts out."""
