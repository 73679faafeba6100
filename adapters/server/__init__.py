"""The embedded OpenAI-compatible server (aiohttp) and its backends."""
