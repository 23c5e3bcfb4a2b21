"""An OpenAI-compatible model provider whose output is a pure function of the request."""
