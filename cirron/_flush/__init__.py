"""The background half: turn buffered records into batches and hand them to the sinks."""
