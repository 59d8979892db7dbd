"""RecBole as a speed peer, in its own virtual environment (never a dependency of thinkrec)."""
