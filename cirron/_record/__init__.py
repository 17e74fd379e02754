"""The hot path: scopes and marks recorded in the caller's thread or task, with no I/O."""
