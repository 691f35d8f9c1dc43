"""
L{StateMachineView}: the L{IStateMachine} face of an L{INodeStore}, which
both store providers hand the core (see its docstring for why a store
needs one).  Nothing else lives here; it imports no provider.
"""

from __future__ import annotations

from zope.interface import implementer

from kvpaxos.storage.interfaces import IStateMachine


@implementer(IStateMachine)
class StateMachineView:
    """
    The L{IStateMachine} of an L{INodeStore}: its C{snapshot()} is the
    store's C{snapshot_data()}.

    L{INodeStore} extends both L{IReplicaStorage} and L{IStateMachine}, and
    both declare C{snapshot()}: the first returns a
    L{kvpaxos.paxos.messages.Snapshot}, the second C{bytes}.  One method
    cannot be both; the stores keep the L{IReplicaStorage} meaning (the core
    reads it at construction) and offer the state machine's as
    C{snapshot_data()} and through this view, at C{store.state_machine}::

        Replica(node_id, store, rng, options,
                state_machine=store.state_machine,
                applied=store.applied_index())
    """

    #: The store keeps its data with its applied index: the core compacts
    #: the log without copying the data.
    durable = True

    def __init__(self, store) -> None:
        self._store = store

    def snapshot(self) -> bytes:
        """Return the store's data as of its last commit (encode_snapshot)."""
        return self._store.snapshot_data()

    def snapshot_now(self) -> tuple[int, bytes]:
        """Return the store's applied index and data, as of its last commit."""
        return self._store.snapshot_now()
