"""
The Twisted adapter around the Paxos core: the replica service that performs
each Ready (persist on the writer thread, send, apply, advance), the peer
links over AMP, and the errors the edges translate.
"""
