from twisted.application.service import ServiceMaker

kvpaxos = ServiceMaker(
    "kvpaxos", "kvpaxos.tap", "A replicated key-value store (Multi-Paxos, gRPC clients).", "kvpaxos"
)
