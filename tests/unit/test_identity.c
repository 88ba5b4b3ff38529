#include "crypto/identity.h"
#include "fm_test.h"

#include <sys/stat.h>
#include <unistd.h>

static void test_text_roundtrip(void)
{
    uint8_t seed[32] = {1, 2, 3};
    fm_identity *id;
    CHECK_OK(fm_identity_from_seed(seed, &id));
    uint8_t pk[32], back[32];
    fm_identity_public(id, pk);
    char text[FM_ID_TEXT_LEN + 1], fpr[FM_FINGERPRINT_LEN + 1];
    fm_id_to_text(pk, text);
    CHECK_EQ_INT(strlen(text), FM_ID_TEXT_LEN);
    CHECK_OK(fm_id_from_text(text, back));
    CHECK_MEM(pk, back, 32);
    text[3] = '1'; /* not in the alphabet */
    CHECK_RC(fm_id_from_text(text, back), FM_EINVAL);
    CHECK_RC(fm_id_from_text("abc", back), FM_EINVAL);
    fm_fingerprint(pk, fpr);
    CHECK_EQ_INT(strlen(fpr), FM_FINGERPRINT_LEN);
    fm_identity_free(id);
}

static void test_sign_verify_domains(void)
{
    uint8_t seed[32] = {9};
    fm_identity *id;
    CHECK_OK(fm_identity_from_seed(seed, &id));
    uint8_t pk[32], sig[64];
    fm_identity_public(id, pk);
    const uint8_t msg[] = "hello";
    fm_identity_sign(id, "fm-batch", msg, 5, sig);
    CHECK_OK(fm_sig_verify(pk, "fm-batch", msg, 5, sig));
    CHECK_RC(fm_sig_verify(pk, "fm-cert", msg, 5, sig), FM_ESIG);
    CHECK_RC(fm_sig_verify(pk, "fm-batch", msg, 4, sig), FM_ESIG);
    sig[10] ^= 1;
    CHECK_RC(fm_sig_verify(pk, "fm-batch", msg, 5, sig), FM_ESIG);
    fm_identity_free(id);
}

static void test_keyfile(void)
{
    char dir[] = "/tmp/fm-test-idXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/device.key", dir);
    fm_test_env te;
    fm_test_env_init(&te, 0, 42);
    fm_identity *a, *b;
    CHECK_OK(fm_identity_create(&te.env, &a));
    CHECK_OK(fm_identity_save(a, path));
    CHECK_RC(fm_identity_save(a, path), FM_EEXISTS);
    struct stat st;
    CHECK_OK(stat(path, &st));
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    CHECK_OK(fm_identity_load(path, &b));
    uint8_t pa[32], pb[32];
    fm_identity_public(a, pa);
    fm_identity_public(b, pb);
    CHECK_MEM(pa, pb, 32);
    fm_identity_free(b);
    chmod(path, 0644);
    CHECK_RC(fm_identity_load(path, &b), FM_EKEYFILE);
    chmod(path, 0600);
    FILE *f = fopen(path, "w");
    fputs("garbage\n", f);
    fclose(f);
    CHECK_RC(fm_identity_load(path, &b), FM_EKEYFILE);
    unlink(path);
    CHECK_RC(fm_identity_load(path, &b), FM_EKEYFILE);
    rmdir(dir);
    fm_identity_free(a);
}

int main(void)
{
    RUN(test_text_roundtrip);
    RUN(test_sign_verify_domains);
    RUN(test_keyfile);
    TEST_MAIN_END();
}
