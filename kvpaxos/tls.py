"""
TLS for the client port, the peer links and the admin port (issue 13,
part 1), and for the clients of each: what the node and the client library
share.

Certificates and keys are PEM files, named as etcd names them: a node's
C{cert_file}, C{key_file} and C{trusted_ca_file} (C{client_cert_auth}: a
client must present a certificate the CA signed) for the gRPC and admin
ports; C{peer_cert_file}, C{peer_key_file} and C{peer_trusted_ca_file} for
the peer links, always mutual (a peer presents its certificate both when
it connects and when it is connected to, and a plaintext or unknown peer
is refused).  A client passes C{cacert}, C{cert} and C{key}.

Every listener re-reads its files when they change (by modification time,
size and inode), for the connections made from then on, without a
restart: the gRPC port through C{grpc.dynamic_ssl_server_credentials} (in
grpc's own threads), the AMP ports through L{ServerTLS} (a connection
notices the change, a pool thread loads the files, later connections get
them: the reactor only stats).  Files that fail to load at that point are
logged and the last good ones kept.

Nothing here imports the node or the client: both use it.
"""

from __future__ import annotations

import datetime
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional


class TLSError(ValueError):
    """A certificate, key or CA file is missing, unreadable, malformed, mismatched or out of date."""


def read_pem(path: str, what: str) -> bytes:
    """
    Return the bytes of C{path}, a PEM file.

    @param what: how the error names the file (e.g. C{"cert_file"}).
    @raise TLSError: it cannot be read, or holds no PEM block.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise TLSError(f"{what} {path!r} cannot be read: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise TLSError(f"{what} {path!r} is not a PEM file")
    return data


def _certificates(data: bytes, what: str, path: str) -> list:
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TLSError(f"{what} {path!r} holds no readable certificate: {error}") from None
    return certificates


def _check_dates(certificate, what: str, path: str, now: datetime.datetime) -> None:
    if certificate.not_valid_after_utc < now:
        raise TLSError(f"{what} {path!r} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if certificate.not_valid_before_utc > now:
        raise TLSError(
            f"{what} {path!r} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")


@dataclass(frozen=True)
class TLSFiles:
    """
    The PEM files of one side of a TLS connection: its certificate (chain,
    leaf first) and key, and the CA certificates it trusts (None: on a
    server, clients are not asked for a certificate; on a client, the
    system's roots).  C{names} are how errors name the three files.
    """

    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    trusted_ca_file: Optional[str] = None
    names: tuple = ("cert_file", "key_file", "trusted_ca_file")

    def stamp(self) -> tuple:
        """The modification times and sizes of the files: what changes when one is replaced."""
        stamps = []
        for path in (self.cert_file, self.key_file, self.trusted_ca_file):
            if path is None:
                stamps.append(None)
                continue
            try:
                info = os.stat(path)
            except OSError:
                stamps.append(("missing",))
                continue
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def load(self, now: Optional[datetime.datetime] = None) -> "LoadedTLS":
        """
        Read and check the files: the key is the certificate's, the
        certificate is in date, the CA file holds certificates.

        @raise TLSError: saying which file and what is wrong.
        """
        from cryptography.hazmat.primitives import serialization

        cert_name, key_name, ca_name = self.names
        now = now or datetime.datetime.now(datetime.timezone.utc)
        cert = key = ca = None
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSError(f"{cert_name} and {key_name} go together: give both or neither")
        if self.cert_file is not None:
            cert = read_pem(self.cert_file, cert_name)
            key = read_pem(self.key_file, key_name)
            chain = _certificates(cert, cert_name, self.cert_file)
            try:
                private = serialization.load_pem_private_key(key, password=None)
            except (ValueError, TypeError) as error:
                raise TLSError(
                    f"{key_name} {self.key_file!r} holds no readable unencrypted private key: {error}") from None
            public = serialization.PublicFormat.SubjectPublicKeyInfo
            encoding = serialization.Encoding.DER
            if chain[0].public_key().public_bytes(encoding, public) != private.public_key().public_bytes(
                    encoding, public):
                raise TLSError(f"{key_name} {self.key_file!r} is not the key of {cert_name} {self.cert_file!r}")
            _check_dates(chain[0], cert_name, self.cert_file, now)
        if self.trusted_ca_file is not None:
            ca = read_pem(self.trusted_ca_file, ca_name)
            _certificates(ca, ca_name, self.trusted_ca_file)
        return LoadedTLS(cert, key, ca)


@dataclass(frozen=True)
class LoadedTLS:
    """The PEM bytes of L{TLSFiles}, checked."""

    cert: Optional[bytes]
    key: Optional[bytes]
    ca: Optional[bytes]

    def twisted_options(self, require_peer_certificate: bool):
        """
        Return C{twisted.internet.ssl.CertificateOptions} for a server
        presenting this certificate; with C{require_peer_certificate}, it
        asks for a client certificate signed by the CA and refuses a
        connection without one.
        """
        from twisted.internet import ssl

        private = ssl.PrivateCertificate.loadPEM(self.cert + b"\n" + self.key)
        extra = [ssl.Certificate.loadPEM(c).original for c in _split(self.cert)[1:]]
        from OpenSSL import SSL

        kwargs = {}
        if require_peer_certificate:
            kwargs["trustRoot"] = self._trust_root()
        options = ssl.CertificateOptions(
            privateKey=private.privateKey.original, certificate=private.original,
            extraCertChain=extra or None, **kwargs,
        )
        # Twisted's ALPN callback answers b"" when nothing overlaps, which
        # OpenSSL takes as an error: a client offering ALPN (h2, say) got
        # "tlsv1 alert internal error".  These ports speak AMP, negotiated
        # by no ALPN name: go on without one, as a server that has none.
        options.getContext().set_alpn_select_callback(lambda connection, offered: SSL.NO_OVERLAPPING_PROTOCOLS)
        return options

    def twisted_client(self, host: str):
        """
        Return a Twisted client connection creator for C{host} (a name or an
        IP address the server's certificate must name), presenting this
        certificate if there is one, trusting the CA (or the system's roots).
        """
        from twisted.internet import ssl

        client = None
        if self.cert is not None:
            client = ssl.PrivateCertificate.loadPEM(self.cert + b"\n" + self.key)
        trust = self._trust_root() if self.ca is not None else None
        return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)

    def _trust_root(self):
        from twisted.internet import ssl

        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(c) for c in _split(self.ca)])

    def grpc_server_configuration(self):
        """The C{grpc.ssl_server_certificate_configuration} of these files."""
        import grpc

        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.ca)


def _split(pem: bytes) -> list[bytes]:
    """The certificate blocks of C{pem}, each its own PEM."""
    marker = b"-----BEGIN CERTIFICATE-----"
    return [marker + block.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
            for block in pem.split(marker)[1:]]


class _Reloading:
    """The last good L{LoadedTLS} of some L{TLSFiles}, re-read when they change."""

    def __init__(self, files: TLSFiles, build: Callable, warn: Callable[[str], None]) -> None:
        self._files = files
        self._build = build
        self._warn = warn
        self._stamp = files.stamp()
        self.current = build(files.load())
        # grpc may run its fetcher in several threads at once.
        self._lock = threading.Lock()
        #: The stamp being loaded in a pool thread (L{refresh_in_thread}), or None.
        self._pending = None

    def refresh(self) -> bool:
        """Re-read the files if they changed; return whether C{current} was replaced."""
        stamp = self._files.stamp()
        if stamp == self._stamp:
            return False
        with self._lock:
            return self._reload(stamp)

    def _reload(self, stamp: tuple) -> bool:
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.current = self._build(self._files.load())
        except Exception as error:  # a half-written file, a bad key, an expired certificate...
            self._warn(f"TLS files changed but were not taken (the previous ones are kept): {error}")
            return False
        return True

    def refresh_in_thread(self) -> None:
        """
        For the reactor thread: if the files changed (a stat of each), re-read
        them in a pool thread; C{current} is replaced once they loaded (the
        connections before that keep the previous ones), and the reactor
        never waits for the files.
        """
        stamp = self._files.stamp()
        if stamp == self._stamp or self._pending == stamp:
            return
        from twisted.internet import threads

        self._pending = stamp

        def load():
            return self._build(self._files.load())

        def loaded(current) -> None:
            self._stamp, self._pending, self.current = stamp, None, current

        def failed(failure) -> None:
            self._stamp, self._pending = stamp, None
            self._warn(f"TLS files changed but were not taken (the previous ones are kept): {failure.value}")

        threads.deferToThread(load).addCallbacks(loaded, failed)


class ServerTLS:
    """
    A Twisted server connection creator (C{IOpenSSLServerConnectionCreator})
    that re-reads its files when they change, for the connections accepted
    from then on.  Wrap a factory with L{wrap}.

    @raise TLSError: the files do not load (at construction only).
    """

    def __init__(self, files: TLSFiles, require_peer_certificate: bool,
                 warn: Callable[[str], None] = lambda line: None) -> None:
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
        from zope.interface import directlyProvides

        if require_peer_certificate and files.trusted_ca_file is None:
            raise TLSError(f"verifying peers' certificates needs {files.names[2]}")
        self._options = _Reloading(files, lambda loaded: loaded.twisted_options(require_peer_certificate), warn)
        directlyProvides(self, IOpenSSLServerConnectionCreator)

    def serverConnectionForTLS(self, tlsProtocol):
        """A connection for one accepted socket, from the files as last loaded (a change is loaded off the reactor)."""
        from OpenSSL import SSL

        self._options.refresh_in_thread()
        return SSL.Connection(self._options.current.getContext(), None)

    def wrap(self, factory):
        """Return C{factory} behind TLS (a C{TLSMemoryBIOFactory})."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(self, False, factory)


def grpc_server_credentials(files: TLSFiles, require_client_certificate: bool,
                            warn: Callable[[str], None] = lambda line: None):
    """
    Return C{grpc.ServerCredentials} that re-read C{files} when they change,
    for new connections (C{grpc.dynamic_ssl_server_credentials}); with
    C{require_client_certificate}, a client must present a certificate the
    CA signed.

    @raise TLSError: the files do not load, or a client certificate is
        required without a CA to check it.
    """
    import grpc

    if require_client_certificate and files.trusted_ca_file is None:
        raise TLSError(f"client_cert_auth needs {files.names[2]}")
    reloading = _Reloading(files, LoadedTLS.grpc_server_configuration, warn)

    def fetch():
        # Called by grpc at each handshake: None keeps the configuration.
        return reloading.current if reloading.refresh() else None

    return grpc.dynamic_ssl_server_credentials(
        reloading.current, fetch, require_client_authentication=require_client_certificate)


def grpc_channel_credentials(cacert: Optional[str] = None, cert: Optional[str] = None,
                             key: Optional[str] = None):
    """
    Return C{grpc.ChannelCredentials} trusting C{cacert} (None: the
    system's roots), presenting C{cert} and C{key} if given.

    @raise TLSError: a file does not load (see L{TLSFiles.load}).
    """
    import grpc

    loaded = TLSFiles(cert, key, cacert, names=("--cert", "--key", "--cacert")).load()
    return grpc.ssl_channel_credentials(root_certificates=loaded.ca, private_key=loaded.key,
                                        certificate_chain=loaded.cert)


def client_files(cacert: Optional[str], cert: Optional[str], key: Optional[str]) -> Optional[TLSFiles]:
    """The L{TLSFiles} a client gave (C{--cacert --cert --key}), or None for plaintext."""
    if cacert is None and cert is None and key is None:
        return None
    return TLSFiles(cert, key, cacert, names=("--cert", "--key", "--cacert"))


def handshake_failure(value) -> Optional[str]:
    """
    The reason of a failed TLS handshake seen by Twisted (pyOpenSSL's
    error, or the certificate naming another host), or None for any other
    error.
    """
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - twisted[tls] is a dependency
        return None
    if isinstance(value, SSL.Error):
        reasons = []
        if value.args and isinstance(value.args[0], list):
            reasons = [r[-1] for r in value.args[0] if isinstance(r, tuple) and r and r[-1]]
        return ", ".join(reasons) or str(value) or "handshake failed"
    if type(value).__name__ == "VerificationError":  # service_identity's
        return f"the certificate does not name the host dialled ({value})"
    return None


class ClientTLS:
    """
    A client side's TLS files, loaded now (before the reactor runs), and
    again after they changed, in a pool thread, when a connection notices
    (L{_Reloading.refresh_in_thread}): what L{TLSClientEndpoint}s share.

    @raise TLSError: the files do not load.
    """

    def __init__(self, files: TLSFiles, warn: Callable[[str], None] = lambda line: None) -> None:
        self._loaded = _Reloading(files, lambda loaded: loaded, warn)

    def creator(self, host: str):
        """The connection creator for C{host}, from the files as last loaded."""
        self._loaded.refresh_in_thread()
        return self._loaded.current.twisted_client(host)


class TLSClientEndpoint:
    """
    A Twisted client endpoint (C{IStreamClientEndpoint}) over TLS, on
    C{inner} (the plain TCP endpoint to C{host}): C{tls}' certificate is
    presented, and the server's must be signed by its CA and name C{host}.
    A link that reconnects after the files were replaced uses the new ones
    (L{ClientTLS}).
    """

    def __init__(self, inner, host: str, tls: ClientTLS, warn: Callable[[str], None] = lambda line: None) -> None:
        from twisted.internet.interfaces import IStreamClientEndpoint
        from zope.interface import directlyProvides

        self._inner, self._host = inner, host
        self._tls = tls
        self._warn = warn
        directlyProvides(self, IStreamClientEndpoint)

    def connect(self, factory):
        from twisted.internet.defer import fail
        from twisted.internet.endpoints import wrapClientTLS

        try:
            creator = self._tls.creator(self._host)
        except Exception as error:
            self._warn(f"no TLS connection to {self._host}: {error}")
            return fail()
        return wrapClientTLS(creator, self._inner).connect(factory)
