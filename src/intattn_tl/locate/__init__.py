"""Locating facts: causal tracing (`tracing`), α and the critical layers (`balance`), figures (`plots`)."""
