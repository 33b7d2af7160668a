#!/usr/bin/env python3
"""An independent implementation of DESIGN section 5 (keyring, wrapped key, Cobblestone-256, sealed file).

Written from the spec alone, with no code shared with the Swift vault: AES-256-GCM and HKDF-SHA-512 from the
`cryptography` package, Argon2id and XChaCha20-Poly1305 from libsodium through ctypes. The end-to-end tests use it
to read what `vault` writes and to write files that `vault decrypt` must read.

Usage (the passphrase comes from VAULT_PASSPHRASE, never an argument):
  vault_format.py keys KEYRING                         print the keyring's entries as JSON (ids, states, key b64)
  vault_format.py decrypt KEYRING SEALED OUT           decrypt a sealed file
  vault_format.py init FORCE KEYRING                   write a new keyring (opslimit 2, memlimit 64 MiB)
  vault_format.py encrypt KEYRING DATASET IN OUT       write a sealed file under the keyring's active master key
  vault_format.py audit-verify EXPORT PUBLIC_KEY_PEM   verify an audit export (DESIGN 5.5); no passphrase needed
"""
import base64, ctypes, ctypes.util, hashlib, json, os, re, sys, time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives import hashes

sodium = ctypes.CDLL(ctypes.util.find_library("sodium"))
if sodium.sodium_init() < 0:
    raise SystemExit("libsodium failed to initialise")
ALG_ARGON2ID13 = 2
CHUNK = 16384
TAG = 16


ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def require(condition, message):
    """Explicit checks (not `assert`, which `python -O` removes)."""
    if not condition:
        raise SystemExit("invalid: " + message)


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    require(len(keys) == len(set(keys)), "duplicate JSON member")
    return dict(pairs)


def parse_json(data):
    return json.loads(data, object_pairs_hook=no_duplicates)


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text, length=None):
    require(isinstance(text, str), "base64 field is not a string")
    data = base64.b64decode(text, validate=True)
    require(base64.b64encode(data).decode() == text, "non-canonical base64")
    require(length is None or len(data) == length, "base64 field has the wrong length")
    return data


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def argon2id(passphrase, salt, opslimit, memlimit):
    out = ctypes.create_string_buffer(32)
    require(len(salt) == 16, "salt must be 16 bytes")
    require(type(opslimit) is int and type(memlimit) is int, "kdf limits must be integers")
    rc = sodium.crypto_pwhash(out, ctypes.c_ulonglong(32), passphrase, ctypes.c_ulonglong(len(passphrase)), salt,
                              ctypes.c_ulonglong(opslimit), ctypes.c_size_t(memlimit), ctypes.c_int(ALG_ARGON2ID13))
    require(rc == 0, "crypto_pwhash failed")
    return out.raw


def xchacha_open(key, nonce, sealed, aad):
    require(len(nonce) == 24 and len(sealed) >= 16, "sealed data too short")
    out = ctypes.create_string_buffer(max(len(sealed) - 16, 1))
    outlen = ctypes.c_ulonglong(0)
    rc = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(out, ctypes.byref(outlen), None, sealed,
                                                           ctypes.c_ulonglong(len(sealed)), aad,
                                                           ctypes.c_ulonglong(len(aad)), nonce, key)
    if rc != 0:
        raise SystemExit("keyring: authentication failed")
    return out.raw[:outlen.value]


def xchacha_seal(key, nonce, plaintext, aad):
    out = ctypes.create_string_buffer(len(plaintext) + 16)
    outlen = ctypes.c_ulonglong(0)
    rc = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(out, ctypes.byref(outlen), plaintext,
                                                           ctypes.c_ulonglong(len(plaintext)), aad,
                                                           ctypes.c_ulonglong(len(aad)), None, nonce, key)
    require(rc == 0, "xchacha encryption failed")
    return out.raw[:outlen.value]


def open_keyring(path, passphrase):
    doc = parse_json(open(path, "rb").read())
    require(doc.get("format") == "vault-keyring-v1", "not a vault-keyring-v1 file")
    require(isinstance(doc.get("force"), str) and ID.match(doc["force"]), "bad force id")
    kdf = doc["kdf"]
    require(kdf.get("alg") == "argon2id13", "kdf alg must be argon2id13")
    key = argon2id(passphrase, unb64(kdf["salt"], 16), kdf["opslimit"], kdf["memlimit"])
    sealed = unb64(doc["sealed"])
    plaintext = xchacha_open(key, sealed[:24], sealed[24:], ("vault-keyring-v1:" + doc["force"]).encode())
    keys = parse_json(plaintext)["keys"]
    active = [k for k in keys if k["kind"] == "master" and k["state"] == "active"]
    require(len(active) == 1, "exactly one active master key expected")
    for k in keys:
        require(k["state"] == "destroyed" or len(unb64(k["key"])) == 32, "key %s is not 32 bytes" % k["id"])
    return doc["force"], keys


def wrap_aad(kek, force, dataset, extract):
    return b"\x00".join([b"vault.wrap.v1", kek.encode(), force.encode(), dataset.encode(), extract.encode()])


def payload_context(force, dataset, extract):
    return b"\x00".join([b"vault.extract.v1", force.encode(), dataset.encode(), extract.encode()])


def derive(ek, salt, context):
    info = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00" + salt + context
    okm = HKDFExpand(algorithm=hashes.SHA512(), length=76, info=info).derive(ek)
    return okm[:32], okm[32:44], okm[44:]


def nonce_for(base, index):
    counter = index.to_bytes(12, "big")
    return bytes(a ^ b for a, b in zip(base, counter))


def cobblestone_decrypt(ek, context, ciphertext):
    if len(ciphertext) < 56 + TAG:
        raise SystemExit("cobblestone: too short")
    salt, commitment = ciphertext[:24], ciphertext[24:56]
    key, base, expected = derive(ek, salt, context)
    if commitment != expected:
        raise SystemExit("cobblestone: commitment mismatch")
    require(len(ek) == 32, "extract key must be 32 bytes")
    body = ciphertext[56:]
    aead = AESGCM(key)
    out = bytearray()
    offset, index = 0, 0
    while True:
        rest = len(body) - offset
        if rest >= CHUNK + TAG:  # a full-size chunk is never the final one
            out += aead.decrypt(nonce_for(base, index), body[offset:offset + CHUNK + TAG], None)
            offset += CHUNK + TAG
            index += 1
            continue
        if rest < TAG:
            raise SystemExit("cobblestone: truncated")
        out += aead.decrypt(nonce_for(base, index), body[offset:], None)
        return bytes(out)


def cobblestone_encrypt(ek, context, plaintext):
    salt = os.urandom(24)
    key, base, commitment = derive(ek, salt, context)
    aead = AESGCM(key)
    out = bytearray(salt + commitment)
    full = len(plaintext) // CHUNK
    for i in range(full):
        out += aead.encrypt(nonce_for(base, i), plaintext[i * CHUNK:(i + 1) * CHUNK], None)
    out += aead.encrypt(nonce_for(base, full), plaintext[full * CHUNK:], None)
    return bytes(out)


ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid():
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(ULID_ALPHABET[(value >> (125 - 5 * i)) & 31] for i in range(26))


AUDIT_FIELDS = {"seq", "time", "force", "principal", "action", "target", "use_case", "outcome", "detail", "prev"}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def audit_verify(export_path, public_key_path):
    """Checks every line of an export: canonical records chained by prev = SHA-256 of the previous line, seq without
    gaps, Ed25519 checkpoints over canonical {force, hash, seq, time} that match the record they follow, the last
    record covered by a checkpoint."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    public_key = load_pem_public_key(open(public_key_path, "rb").read())
    lines = open(export_path, "rb").read().split(b"\n")
    require(lines[-1] == b"", "the export does not end with a newline")
    header = parse_json(lines[0])
    require(header.get("format") == "vault-audit-export-v1", "line 1 is not an export header")
    force, first, last = header["force"], header["first_seq"], header["last_seq"]
    expected, previous_hash, covered, records, first_prev, seal = first, None, None, 0, None, None
    for number, line in enumerate(lines[1:-1], start=2):
        value = parse_json(line)
        require(line == canonical(value), "line %d is not canonical JSON" % number)
        require(seal is None, "line %d follows the export's seal" % number)
        if "export" in value:
            require(set(value) == {"export", "signature"}, "line %d: bad seal" % number)
            seal = value["export"]
            require(set(seal) == {"format", "force", "first_seq", "last_seq", "first_prev", "last_hash",
                                  "exported_at"} and seal["format"] == "vault-audit-export-v1", "bad seal body")
            try:
                public_key.verify(unb64(value["signature"], 64), canonical(seal))
            except Exception:
                raise SystemExit("invalid: line %d: the seal's signature does not verify" % number)
            continue
        if "checkpoint" in value:
            require(set(value) == {"checkpoint", "signature"}, "line %d: bad checkpoint" % number)
            body = value["checkpoint"]
            require(set(body) == {"force", "hash", "seq", "time"} and body["force"] == force,
                    "line %d: bad checkpoint body" % number)
            try:
                public_key.verify(unb64(value["signature"], 64), canonical(body))
            except Exception:
                raise SystemExit("invalid: line %d: checkpoint signature does not verify" % number)
            if previous_hash is None:
                require(body["seq"] == first - 1, "line %d: checkpoint before the first record" % number)
                previous_hash = body["hash"]
            else:
                require(body["seq"] == expected - 1 and body["hash"] == previous_hash,
                        "line %d: checkpoint does not match record %d" % (number, expected - 1))
            covered = body["seq"]
            continue
        require(set(value) == AUDIT_FIELDS, "line %d: record fields are not the DESIGN 5.5 set" % number)
        require(value["force"] == force and value["outcome"] in ("allowed", "denied", "error"),
                "line %d: bad force or outcome" % number)
        require(TIME.match(value["time"]) and isinstance(value["detail"], dict), "line %d: bad time/detail" % number)
        require(value["seq"] == expected, "line %d: seq %s where %d belongs" % (number, value["seq"], expected))
        if first_prev is None:
            first_prev = value["prev"]
        if expected == 1:
            require(value["prev"] == "0" * 64, "line %d: the first record's prev is not zeros" % number)
        elif previous_hash is not None:
            require(value["prev"] == previous_hash, "line %d: prev does not match record %d" % (number, expected - 1))
        previous_hash = hashlib.sha256(line).hexdigest()
        expected += 1
        records += 1
    require(expected - 1 == last, "the export ends at seq %d, its header says %d" % (expected - 1, last))
    require(records == 0 or covered == last, "the last record is not covered by a signed checkpoint")
    require(seal is not None, "the export's signed seal is missing (cut off)")
    require(seal["force"] == force and seal["first_seq"] == first and seal["last_seq"] == last,
            "the header disagrees with the signed seal")
    require(records == 0 or (seal["first_prev"] == first_prev and seal["last_hash"] == previous_hash),
            "the first or last record does not match the signed seal")
    print(json.dumps({"force": force, "first_seq": first, "last_seq": last, "records": records}))


def main():
    command = sys.argv[1]
    if command == "audit-verify":
        audit_verify(sys.argv[2], sys.argv[3])
        return
    passphrase = os.environb[b"VAULT_PASSPHRASE"]
    if command == "keys":
        force, keys = open_keyring(sys.argv[2], passphrase)
        print(json.dumps({"force": force, "keys": keys}))
    elif command == "decrypt":
        force, keys = open_keyring(sys.argv[2], passphrase)
        data = open(sys.argv[3], "rb").read()
        newline = data.index(b"\n")
        header = parse_json(data[:newline])
        require(data[:newline] == canonical(header), "header is not canonical JSON")
        require(set(header) == {"ciphertext_sha256", "context", "dataset", "extract", "force", "format",
                                "plaintext_size", "wrapped_key"}, "unexpected header members")
        require(header["format"] == "vault-sealed-v1", "format must be vault-sealed-v1")
        require(header["force"] == force, "the file belongs to another force than the keyring")
        require(ID.match(header["dataset"]) and ULID.match(header["extract"]), "bad dataset or extract id")
        require(type(header["plaintext_size"]) is int and header["plaintext_size"] >= 0, "bad plaintext_size")
        context = payload_context(header["force"], header["dataset"], header["extract"])
        require(unb64(header["context"]) == context, "context mismatch")
        ciphertext = data[newline + 1:]
        require(hashlib.sha256(ciphertext).hexdigest() == header["ciphertext_sha256"], "sha256 mismatch")
        wrapped = header["wrapped_key"]
        require(set(wrapped) == {"kek", "alg", "iv", "ct"} and wrapped["alg"] == "A256GCM", "bad wrapped key")
        kek = [k for k in keys if k["id"] == wrapped["kek"]]
        require(len(kek) == 1 and kek[0]["state"] != "destroyed", "unknown or destroyed KEK")
        ek = AESGCM(unb64(kek[0]["key"], 32)).decrypt(
            unb64(wrapped["iv"], 12), unb64(wrapped["ct"], 48),
            wrap_aad(wrapped["kek"], force, header["dataset"], header["extract"]))
        plaintext = cobblestone_decrypt(ek, context, ciphertext)
        require(len(plaintext) == header["plaintext_size"], "plaintext size mismatch")
        open(sys.argv[4], "wb").write(plaintext)
    elif command == "init":
        force, path = sys.argv[2], sys.argv[3]
        salt = os.urandom(16)
        opslimit, memlimit = 2, 64 << 20
        key = argon2id(passphrase, salt, opslimit, memlimit)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # Written the way another implementation might: key order and spacing differ from the vault's.
        inner = json.dumps({"keys": [{"state": "active", "key": b64(os.urandom(32)), "kind": "master",
                                      "id": "fmk:%s:1" % force, "created": created}]}, indent=1).encode()
        nonce = os.urandom(24)
        sealed = xchacha_seal(key, nonce, inner, ("vault-keyring-v1:" + force).encode())
        doc = {"format": "vault-keyring-v1", "force": force, "sealed": b64(nonce + sealed),
               "kdf": {"alg": "argon2id13", "salt": b64(salt), "opslimit": opslimit, "memlimit": memlimit}}
        open(path, "w").write(json.dumps(doc, indent=2))
    elif command == "encrypt":
        force, keys = open_keyring(sys.argv[2], passphrase)
        dataset, source, target = sys.argv[3], sys.argv[4], sys.argv[5]
        plaintext = open(source, "rb").read()
        extract = ulid()
        active = next(k for k in keys if k["kind"] == "master" and k["state"] == "active")
        ek = os.urandom(32)
        iv = os.urandom(12)
        ct = AESGCM(unb64(active["key"])).encrypt(iv, ek, wrap_aad(active["id"], force, dataset, extract))
        context = payload_context(force, dataset, extract)
        ciphertext = cobblestone_encrypt(ek, context, plaintext)
        header = {"ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest(), "context": b64(context),
                  "dataset": dataset, "extract": extract, "force": force, "format": "vault-sealed-v1",
                  "plaintext_size": len(plaintext),
                  "wrapped_key": {"kek": active["id"], "alg": "A256GCM", "iv": b64(iv), "ct": b64(ct)}}
        open(target, "wb").write(canonical(header) + b"\n" + ciphertext)
    else:
        raise SystemExit("unknown command " + command)


if __name__ == "__main__":
    main()
