"""Training and evaluation time against RecBole, the cost of reasoning steps, serving, kernel choices."""
