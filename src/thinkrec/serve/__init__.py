"""Serving a trained run: the one recommendation path (:mod:`thinkrec.serve.service`) over a batched
:class:`~thinkrec.serve.recommender.Recommender` (sequence models) or
:class:`~thinkrec.serve.llm.LLMRecommender` (R²ec), offline batch scoring (:mod:`thinkrec.serve.batch`), the
Python API behind :mod:`thinkrec` (:mod:`thinkrec.serve.api`) and an HTTP API with a small web page
(:mod:`thinkrec.serve.app`, needs the ``serve`` extra: ``pip install 'thinkrec[serve]'``)."""
