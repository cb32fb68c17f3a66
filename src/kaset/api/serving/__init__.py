"""The logic behind the OpenAI-shaped routes, as in vLLM's `entrypoints/openai/<family>/serving`:
a router (kaset.api.routers) parses the HTTP request and answers it; the modules here turn the
request into model-handle calls and the results into OpenAI's response shapes."""
