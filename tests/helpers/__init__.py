"""Plain helpers shared by several test modules (fixtures live in tests/conftest.py).

paths: the tiny checkpoints under tests/fixtures; convert: the converter and a faked hub;
stats: the chi-square check; chat: a fake loop with the real contract for the chat front end.
"""
