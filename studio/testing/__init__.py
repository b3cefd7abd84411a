"""Builders for tests, benchmarks and demos (not the runtime engine): tiny random-weight pipelines with the real
architectures (`tiny`). They import diffusers and transformers when called, never at import."""
