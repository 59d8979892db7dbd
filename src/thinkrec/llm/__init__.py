"""R²ec: one LLM that reasons with its language head and ranks the catalogue with a recommendation head."""
