"""R²ec (the LLM recommender): end-to-end comparison, the cost of one RecPO step, training fit."""
