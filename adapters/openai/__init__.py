"""OpenAI's API (chat completions, Files, Batches) for any OpenAI-compatible endpoint."""
