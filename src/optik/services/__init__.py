"""Prediction services: a file drop (`poller`) and Redis pub/sub and streams (`redis_service`).

They only move bytes in and results out; every prediction goes through `optik.inference.Predictor`.
"""
