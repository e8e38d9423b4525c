"""elm-wikitext: WikiText-2 paragraphs paired with Qwen3-Embedding-4B vectors, for ELM training."""
