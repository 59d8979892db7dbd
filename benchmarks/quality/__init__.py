"""Ranking quality: SASRec against its references, ReaRec base vs ERL vs PRL, cold items."""
