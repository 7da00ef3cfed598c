"""Prediction services: a file drop (`poller`), Redis pub/sub and streams (`redis_service`) and HTTP (`http`),
with their shared loop (`loop`) and Prometheus metrics (`metrics`).

They only move bytes in and results out; every prediction goes through `optik.inference.Predictor`.
"""
