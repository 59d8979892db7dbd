"""Serving a trained run: a batched :class:`~thinkrec.serve.recommender.Recommender`, offline batch
scoring (:mod:`thinkrec.serve.batch`) and an HTTP API with a small web page (:mod:`thinkrec.serve.app`,
needs the ``serve`` extra: ``pip install 'thinkrec[serve]'``)."""
