"""
The replicated state machine: client commands (L{kvpaxos.kv.commands}) and
how they apply to the key-value data (L{kvpaxos.kv.machine}).  Deterministic:
every replica that applies the same commands in the same order holds the
same data.
"""
