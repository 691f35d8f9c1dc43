"""kvpaxos: a replicated key-value store built on Multi-Paxos and Twisted."""
