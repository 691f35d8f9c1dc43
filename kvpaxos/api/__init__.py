"""
The gRPC API: its contract and its server.

The contract, shared with the client (L{kvpaxos.client}) and importing
nothing else of kvpaxos: L{errors} (the exceptions every layer names, and
the ErrorInfo reasons failed RPCs carry), L{limits} (keys, values,
transactions, messages), L{endpoints} (the one C{host:port} parser, the
default port, the channel options) and L{admin} (the AMP admin commands,
for the admin server and the CLI).

The server, which runs in a node and never imports the client: L{server}
(the KV and Cluster services, run by grpcio in its own thread),
L{crossing} (calls into the reactor, in batches), L{convert} (messages to
commands and back) and L{statuses} (each failure's code, message and
ErrorInfo).
"""
