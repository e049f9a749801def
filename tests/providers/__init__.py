"""Loopback stand-ins for the hosted model providers, speaking each one's real wire format.

``server.LoopbackServer`` is the HTTP machinery; ``openai_wire``, ``anthropic_wire`` and
``gemini_wire`` build the exact bodies, event streams and error answers each provider
sends, and share one set of names (``text``, ``text_stream``, ``tool_calls``,
``tool_call_stream``, ``error``, ``malformed_stream``, ``cut_stream``, ``unfinished_stream``,
``slow``) so tests can run the same story against every provider.
"""
