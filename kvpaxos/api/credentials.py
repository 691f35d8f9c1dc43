"""
What a gRPC request brings to name its user (L{request_credential}): the
C{token} metadata (etcd's key) and, where the server checks client
certificates, the verified certificate's common name.  The edge only lifts
them out; which user they name, and what that user may do, is the node's
(L{kvpaxos.node.auth}).
"""

from __future__ import annotations

from kvpaxos.kv.auth import NO_CREDENTIAL, Credential

#: The metadata key of a token (etcd's).
TOKEN_METADATA = "token"


def request_credential(context, cert_names_user: bool) -> Credential:
    """
    Return the credential of the request of C{context}: its C{token}
    metadata, and its client certificate's common name if
    C{cert_names_user}.  A streamed request brings its stream's
    (C{context.credential}).
    """
    streamed = getattr(context, "credential", None)
    if streamed is not None:
        return streamed
    token = ""
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA:
            token = value if isinstance(value, str) else ""
    common_name = ""
    if cert_names_user:
        names = (context.auth_context() or {}).get("x509_common_name") or ()
        if names:
            common_name = names[0].decode("utf-8", "replace")
    if not token and not common_name:
        return NO_CREDENTIAL
    return Credential(token, common_name)


def node_arguments(credential: Credential) -> tuple:
    """The credential argument of a node call: none when the request brings none."""
    return () if credential is NO_CREDENTIAL else (credential,)
