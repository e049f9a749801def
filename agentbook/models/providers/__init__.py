"""Model providers through their official SDKs (optional extras): ``openai`` (also any
OpenAI-compatible host), ``anthropic``, ``gemini``; :mod:`.sdk` holds what they share (the
install hint, error mapping, the constructor and repr). Imported only when a factory in
:mod:`agentbook.models` is called, so ``import agentbook`` never loads an SDK."""
