"""
C{kvpaxos-devca DIR}: a development certificate authority for a local
cluster (issue 13, part 1), made with the C{cryptography} package.

It writes into DIR (made if need be; existing files are refused unless
C{--force}):

    ca.pem, ca-key.pem            the client CA: it signs the nodes' server
                                  certificates and the clients' certificates
    node1.pem, node1-key.pem ...  one per node, for its gRPC and admin ports
    client.pem, client-key.pem    a client certificate (common name "root")
    peer-ca.pem, peer-ca-key.pem  the peer CA: it signs member certificates only
    node1-peer.pem, node1-peer-key.pem ...
                                  one per node, for its peer links (server
                                  and client use)

Two CAs, because a peer link trusts every certificate its CA signed: with
one CA, a client's certificate would let its holder speak as a member.
Keep the CA keys to yourself.

Every node certificate names C{localhost}, C{127.0.0.1} and C{::1} (and any
C{--host}), so the sample TLS configuration in C{etc/kvpaxos/tls} works as
it is.  Keys are written readable by their owner only.  This is for
development and tests: a production CA keeps its key offline.

The same functions make the certificates the tests use (L{make_ca},
L{issue}), including expired ones and ones of another CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from typing import NamedTuple, Optional, Sequence

#: What every node certificate names.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class Issued(NamedTuple):
    """A certificate and its private key (C{cryptography} objects)."""

    certificate: object
    key: object

    def certificate_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvpaxos development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _window(days: float, start: Optional[datetime.datetime]):
    start = start or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    return start, start + datetime.timedelta(days=days)


def make_ca(common_name: str = "kvpaxos development CA", days: float = 3650,
            start: Optional[datetime.datetime] = None) -> Issued:
    """Return a new self-signed CA certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    not_before, not_after = _window(days, start)
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue(ca: Issued, common_name: str, hosts: Sequence[str] = (), days: float = 825,
          start: Optional[datetime.datetime] = None, server: bool = True, client: bool = True) -> Issued:
    """
    Return a certificate C{ca} signs for C{common_name}, naming C{hosts}
    (DNS names or IP addresses) as subject alternative names, for server
    and/or client authentication, valid C{days} from C{start} (default: a
    few minutes ago).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _new_key()
    not_before, not_after = _window(days, start)
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write(issued: Issued, cert_path: str, key_path: str) -> None:
    """Write C{issued}'s certificate and key (the key readable by its owner only), each replaced atomically."""
    for path, data, mode in ((cert_path, issued.certificate_pem(), 0o644), (key_path, issued.key_pem(), 0o600)):
        temporary = f"{path}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvpaxos-devca",
        description="Make a development CA and certificates for a local kvpaxos cluster.",
    )
    parser.add_argument("directory", nargs="?", default="kvpaxos-certs",
                        help="where to write them (default: kvpaxos-certs)")
    parser.add_argument("--nodes", type=int, default=3, help="node certificates to make (default: 3)")
    parser.add_argument("--host", action="append", default=[],
                        help="another name or IP address every node certificate names (repeatable)")
    parser.add_argument("--client-name", default="root",
                        help="the client certificate's common name (default: root)")
    parser.add_argument("--force", action="store_true", help="replace certificates already there")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    os.makedirs(args.directory, exist_ok=True)
    outputs = ["ca.pem", "ca-key.pem", "client.pem", "client-key.pem", "peer-ca.pem", "peer-ca-key.pem"] + [
        name for n in range(1, args.nodes + 1)
        for name in (f"node{n}.pem", f"node{n}-key.pem", f"node{n}-peer.pem", f"node{n}-peer-key.pem")]
    there = [name for name in outputs if os.path.exists(os.path.join(args.directory, name))]
    if there and not args.force:
        print(f"kvpaxos-devca: error: {args.directory} already has {', '.join(there)} (--force replaces them)",
              file=sys.stderr)
        return 1
    path = lambda name: os.path.join(args.directory, name)  # noqa: E731
    ca = make_ca()
    write(ca, path("ca.pem"), path("ca-key.pem"))
    peer_ca = make_ca("kvpaxos development peer CA")
    write(peer_ca, path("peer-ca.pem"), path("peer-ca-key.pem"))
    hosts = list(DEFAULT_HOSTS) + [h for h in args.host if h not in DEFAULT_HOSTS]
    for n in range(1, args.nodes + 1):
        write(issue(ca, f"node{n}", hosts), path(f"node{n}.pem"), path(f"node{n}-key.pem"))
        write(issue(peer_ca, f"node{n}", hosts), path(f"node{n}-peer.pem"), path(f"node{n}-peer-key.pem"))
    write(issue(ca, args.client_name, server=False), path("client.pem"), path("client-key.pem"))
    print(f"kvpaxos-devca: wrote a client CA with {args.nodes} node certificates ({', '.join(hosts)}) and a client"
          f" certificate ({args.client_name}), and a peer CA with {args.nodes} member certificates, to"
          f" {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
