"""Stored classifiers answering new letters: in-process (predict) and over HTTP (server).

predict  letters through several classifiers, with agreement and latency
server   `python -m engine serve`: the stored classifiers over HTTP (FastAPI), loopback or with a token
"""
