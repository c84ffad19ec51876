"""Worlds to develop and test on: the built-in mini world (28 px grey, from the package registries) and the
real-photo development world (from ``shared/photo-world``, opt-in)."""
