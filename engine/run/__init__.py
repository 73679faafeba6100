"""Running a task: the predict -> judge pipeline, its stages (realtime calls or provider batches),
the limiter, retries and outages."""
