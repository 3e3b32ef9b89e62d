#!/usr/bin/env python3
"""Make a throwaway certificate authority and the certificates of a TLS Dask cluster.

    python deploy/local/make-certs.py deploy/local/tls
    python deploy/local/make-certs.py deploy/local/tls --host scheduler.example.org --days 7

writes into the directory given (created if needed):

    ca.pem                                the CA's certificate: every process trusts it
    scheduler.pem, scheduler-key.pem      the scheduler's certificate and private key
    worker.pem, worker-key.pem            the workers'
    client.pem, client-key.pem            the job's (the client in cluster.tls)

Every certificate is signed by the CA; the CA's own private key is never written, so no
further certificate can be signed with it (run the script again for a new set). The
private keys are written with mode 0600. These are for trying TLS: a production cluster
takes its certificates from the organisation's CA. Never commit the directory.

Dask's TLS authenticates both ends by the CA (it does not check host names), but the
scheduler's and workers' certificates still name localhost, 127.0.0.1 and every --host.
Needs the ``cryptography`` package (installed with daskgmm's test extra).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("scheduler", "worker", "client")
FILES = ("ca.pem", *(f"{role}{suffix}" for role in ROLES for suffix in (".pem", "-key.pem")))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "daskgmm throwaway CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts) -> x509.SubjectAlternativeName:
    names = []
    for host in ("localhost", "127.0.0.1", "::1", *hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certificates(directory, hosts=(), days=30, force=False) -> list[Path]:
    """Write the CA certificate and a certificate and key per role into ``directory``;
    return the paths written. Refuses to replace existing files unless ``force``."""
    directory = Path(directory)
    existing = [name for name in FILES if (directory / name).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)}; pass --force to replace them "
            f"(every process of the cluster then needs the new files), or give another "
            f"directory")
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5),
                 not_valid_after=now + datetime.timedelta(days=days))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("daskgmm throwaway CA"))
        .issuer_name(_name("daskgmm throwaway CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    written = [_write(directory / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))]
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(f"dask-{role}"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"])
            .not_valid_after(valid["not_valid_after"])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # every process both serves and connects (workers talk to each other)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_alt_names(hosts), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        written.append(_write(directory / f"{role}.pem",
                              cert.public_bytes(serialization.Encoding.PEM)))
        written.append(_write(directory / f"{role}-key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), private=True))
    return written


def _write(path: Path, data: bytes, private=False) -> Path:
    """Write ``data`` to a new file (mode 0600 for a private key) via a temporary name."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the files, e.g. deploy/local/tls")
    parser.add_argument("--host", action="append", default=[],
                        help="a further host name or IP address of the scheduler or a "
                             "worker (repeatable)")
    parser.add_argument("--days", type=int, default=30, help="validity (default 30 days)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    try:
        written = make_certificates(args.directory, args.host, args.days, args.force)
    except (OSError, ValueError) as exc:
        print(f"make-certs: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
