/*
 * identity.c — Ed25519 device identities: creation from injected randomness, the 0600 key file,
 * base32 ids and fingerprints, domain-separated signatures.
 */
#include "crypto/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fm_identity {
    uint8_t pk[crypto_sign_PUBLICKEYBYTES];
    uint8_t *sk; /* sodium_malloc'd, crypto_sign_SECRETKEYBYTES */
};

#define KEYFILE_MAGIC "fieldmesh-device-key 1\n"

static int identity_alloc(fm_identity **out)
{
    if (sodium_init() < 0)
        return FM_ENOMEM;
    fm_identity *id = calloc(1, sizeof *id);
    if (!id)
        return FM_ENOMEM;
    id->sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
    if (!id->sk) {
        free(id);
        return FM_ENOMEM;
    }
    *out = id;
    return 0;
}

int fm_identity_from_seed(const uint8_t seed[32], fm_identity **out)
{
    fm_identity *id;
    int rc = identity_alloc(&id);
    if (rc)
        return rc;
    crypto_sign_seed_keypair(id->pk, id->sk, seed);
    *out = id;
    return 0;
}

int fm_identity_create(const fm_env *env, fm_identity **out)
{
    FM_ASSERT(env && env->random);
    uint8_t seed[32];
    env->random(env->ctx, seed, sizeof seed);
    int rc = fm_identity_from_seed(seed, out);
    sodium_memzero(seed, sizeof seed);
    return rc;
}

int fm_identity_dup(const fm_identity *src, fm_identity **out)
{
    return fm_identity_from_seed(src->sk, out); /* libsodium sk = seed || pk */
}

void fm_identity_free(fm_identity *id)
{
    if (!id)
        return;
    sodium_free(id->sk); /* wipes */
    free(id);
}

void fm_identity_public(const fm_identity *id, uint8_t out[FM_ID_BYTES])
{
    memcpy(out, id->pk, FM_ID_BYTES);
}

const uint8_t *fm_identity_secret(const fm_identity *id)
{
    return id->sk;
}

int fm_identity_save(const fm_identity *id, const char *path)
{
    char hex[2 * 32 + 1];
    sodium_bin2hex(hex, sizeof hex, id->sk, 32);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc = 0;
    if (fd < 0) {
        rc = errno == EEXIST ? FM_EEXISTS : FM_EIO;
        goto out;
    }
    char line[sizeof KEYFILE_MAGIC + sizeof hex + 1];
    int n = snprintf(line, sizeof line, "%s%s\n", KEYFILE_MAGIC, hex);
    if (write(fd, line, (size_t)n) != n || fsync(fd) != 0) {
        rc = FM_EIO;
        unlink(path);
    }
    sodium_memzero(line, sizeof line);
    close(fd);
out:
    sodium_memzero(hex, sizeof hex);
    return rc;
}

int fm_identity_load(const char *path, fm_identity **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return FM_EKEYFILE;
    struct stat st;
    char text[128];
    uint8_t seed[32];
    int rc = FM_EKEYFILE;
    ssize_t n = -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077))
        goto out;
    n = read(fd, text, sizeof text - 1);
    if (n <= 0)
        goto out;
    text[n] = '\0';
    size_t mlen = strlen(KEYFILE_MAGIC);
    size_t bin_len = 0;
    if (strncmp(text, KEYFILE_MAGIC, mlen) != 0 || (size_t)n != mlen + 65 || text[n - 1] != '\n' ||
        sodium_hex2bin(seed, sizeof seed, text + mlen, 64, NULL, &bin_len, NULL) != 0 ||
        bin_len != 32)
        goto out;
    rc = fm_identity_from_seed(seed, out);
out:
    sodium_memzero(text, sizeof text);
    sodium_memzero(seed, sizeof seed);
    close(fd);
    return rc;
}

static void sign_input(crypto_generichash_state *st, const char *domain, const uint8_t *msg,
                       size_t len, uint8_t digest[64])
{
    /* Sign a hash of the message so arbitrarily large inputs cost one pass; the domain is
     * length-prefixed so no domain is a prefix-extension of another. */
    uint8_t dl = (uint8_t)strlen(domain);
    crypto_generichash_init(st, NULL, 0, 64);
    crypto_generichash_update(st, &dl, 1);
    crypto_generichash_update(st, (const uint8_t *)domain, dl);
    crypto_generichash_update(st, msg, len);
    crypto_generichash_final(st, digest, 64);
}

void fm_identity_sign(const fm_identity *id, const char *domain, const uint8_t *msg, size_t len,
                      uint8_t sig[FM_SIG_BYTES])
{
    FM_ASSERT(strlen(domain) < 256);
    crypto_generichash_state st;
    uint8_t digest[64];
    sign_input(&st, domain, msg, len, digest);
    crypto_sign_detached(sig, NULL, digest, sizeof digest, id->sk);
}

int fm_sig_verify(const uint8_t pub[FM_ID_BYTES], const char *domain, const uint8_t *msg,
                  size_t len, const uint8_t sig[FM_SIG_BYTES])
{
    FM_ASSERT(strlen(domain) < 256);
    crypto_generichash_state st;
    uint8_t digest[64];
    sign_input(&st, domain, msg, len, digest);
    return crypto_sign_verify_detached(sig, digest, sizeof digest, pub) == 0 ? 0 : FM_ESIG;
}

/* RFC 4648 base32 alphabet, lowercase, no padding. */
static const char B32[] = "abcdefghijklmnopqrstuvwxyz234567";

static void base32(const uint8_t *in, size_t n, char *out, size_t nchars)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n && o < nchars; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5 && o < nchars) {
            out[o++] = B32[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0 && o < nchars)
        out[o++] = B32[(acc << (5 - bits)) & 31];
    out[o] = '\0';
}

void fm_id_to_text(const uint8_t id[FM_ID_BYTES], char out[FM_ID_TEXT_LEN + 1])
{
    base32(id, FM_ID_BYTES, out, FM_ID_TEXT_LEN);
}

int fm_id_from_text(const char *text, uint8_t out[FM_ID_BYTES])
{
    if (strlen(text) != FM_ID_TEXT_LEN)
        return FM_EINVAL;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < FM_ID_TEXT_LEN; i++) {
        const char *p = strchr(B32, text[i] | 0x20);
        if (!p || !text[i])
            return FM_EINVAL;
        acc = (acc << 5) | (uint32_t)(p - B32);
        bits += 5;
        if (bits >= 8) {
            if (o < FM_ID_BYTES)
                out[o++] = (uint8_t)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    /* 52 chars carry 260 bits: the 4 spare bits must be zero, so each id has one spelling. */
    if (o != FM_ID_BYTES || (acc & ((1u << bits) - 1)) != 0)
        return FM_EINVAL;
    return 0;
}

void fm_fingerprint(const uint8_t id[FM_ID_BYTES], char out[FM_FINGERPRINT_LEN + 1])
{
    /* A hash, not a prefix of the key, so fingerprints of related keys look unrelated. */
    uint8_t h[16];
    crypto_generichash(h, sizeof h, id, FM_ID_BYTES, (const uint8_t *)"fm-fpr", 6);
    base32(h, sizeof h, out, FM_FINGERPRINT_LEN);
}
