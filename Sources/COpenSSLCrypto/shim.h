#ifndef VAULT_COPENSSLCRYPTO_SHIM_H
#define VAULT_COPENSSLCRYPTO_SHIM_H

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/// HKDF through the EVP_PKEY interface. `mode` is one of the EVP_KDF_HKDF_MODE_* values; the salt is ignored in
/// expand-only mode. Returns 1 on success, 0 on failure (the OpenSSL error queue holds the reason).
/// A wrapper because EVP_PKEY_HKDF and the mode constants are macros, and an empty salt must be a non-NULL pointer.
static inline int vault_hkdf(const EVP_MD *md, int mode,
                             const unsigned char *salt, size_t salt_len,
                             const unsigned char *key, size_t key_len,
                             const unsigned char *info, size_t info_len,
                             unsigned char *out, size_t out_len) {
    static const unsigned char empty = 0;
    if (salt == NULL) { salt = &empty; salt_len = 0; }
    if (info == NULL) { info = &empty; info_len = 0; }
    if (key == NULL) { key = &empty; key_len = 0; }
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    if (pctx == NULL) return 0;
    size_t len = out_len;
    int ok = EVP_PKEY_derive_init(pctx) > 0
        && EVP_PKEY_CTX_set_hkdf_mode(pctx, mode) > 0
        && EVP_PKEY_CTX_set_hkdf_md(pctx, md) > 0
        && (mode == EVP_KDF_HKDF_MODE_EXPAND_ONLY || EVP_PKEY_CTX_set1_hkdf_salt(pctx, salt, (int)salt_len) > 0)
        && EVP_PKEY_CTX_set1_hkdf_key(pctx, key, (int)key_len) > 0
        && (info_len == 0 || EVP_PKEY_CTX_add1_hkdf_info(pctx, info, (int)info_len) > 0)
        && EVP_PKEY_derive(pctx, out, &len) > 0
        && len == out_len;
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static inline int vault_hkdf_mode_expand_only(void) { return EVP_KDF_HKDF_MODE_EXPAND_ONLY; }
static inline int vault_hkdf_mode_extract_and_expand(void) { return EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND; }

#endif
