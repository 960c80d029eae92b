"""The built-in researcher: evolutionary search over a typed design space of mixers.

``genome`` defines the design space, ``operators`` the mutation/crossover operators (each tied to
a cognition lever), ``render`` writes a genome as a standalone mixer file on ``training.ops``, and
``search`` chooses operators with a bandit that learns from the lab's history.
"""
