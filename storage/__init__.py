"""Files every layer writes: atomic writes and checksums.

A neutral home below all the others: the simulator's caches, the memories' indexes and the
experiment logs all need a write that a killed process can never leave half done, and `memory/`
must not import the simulator to get one.
"""
