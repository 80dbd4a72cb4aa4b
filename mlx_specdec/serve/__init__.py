"""`specdec serve`: an OpenAI-compatible HTTP server. `app` (routes, start-up), `api` (request
parsing and response bodies), `stream` (server-sent events), `worker` (the one generation thread,
its queue and the prompt-cache pool)."""
