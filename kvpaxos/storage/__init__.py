"""
Storage for a replica's durable acceptor state: the interfaces the Paxos core
reads (L{kvpaxos.storage.interfaces}) and the providers that implement them.
"""
