/* test_config.c — `fieldmesh run` options (flags, config file) and the control socket's wire
 * format. */
#include "fm_test.h"

#include "transport/config.h"
#include "transport/control.h"

#include <stdlib.h>
#include <unistd.h>

static void test_addr_split(void)
{
    char host[256];
    uint16_t port;
    CHECK_OK(fm_addr_split("127.0.0.1:7401", host, sizeof host, &port));
    CHECK_STR(host, "127.0.0.1");
    CHECK_EQ_INT(port, 7401);
    CHECK_OK(fm_addr_split("[::1]:9", host, sizeof host, &port));
    CHECK_STR(host, "::1");
    CHECK_EQ_INT(port, 9);
    CHECK_OK(fm_addr_split("base.local", host, sizeof host, &port));
    CHECK_EQ_INT(port, FM_DEFAULT_PORT);
    CHECK_OK(fm_addr_split("[fe80::1%eth0]", host, sizeof host, &port));
    CHECK_STR(host, "fe80::1%eth0");
    static const char *const bad[] = {"",     ":7400",  "h:0",  "h:65536", "h:x", "::1:7400",
                                      "[::1", "[::1]x", "h:-1", "[]:1",    "h:"};
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++)
        CHECK_RC(fm_addr_split(bad[i], host, sizeof host, &port), FM_EINVAL);
    CHECK_RC(fm_addr_split("abcdefgh:1", host, 4, &port), FM_EINVAL); /* host too long */
}

static void test_flags(void)
{
    fm_daemon_opts o;
    char err[256];
    fm_opts_defaults(&o);
    CHECK(o.mdns && o.ble);
    char *argv[] = {"--listen",    "127.0.0.1:1", "--peer",        "10.0.0.1:2",
                    "--peer",      "10.0.0.1:2",  "--no-mdns",     "--no-ble",
                    "--log-level", "debug",       "--ble-adapter", "hci1"};
    CHECK_OK(fm_opts_parse_args(&o, 12, argv, err, sizeof err));
    CHECK_EQ_INT(o.nlisten, 1);
    CHECK_EQ_INT(o.npeers, 1); /* the same peer twice is one peer */
    CHECK(!o.mdns && !o.ble);
    CHECK_EQ_INT(o.log_level, FM_LOG_DEBUG);
    CHECK_STR(o.ble_adapter, "hci1");
    char *unknown[] = {"--frobnicate"};
    CHECK_RC(fm_opts_parse_args(&o, 1, unknown, err, sizeof err), FM_EINVAL);
    CHECK(strstr(err, "--frobnicate") != NULL);
    char *missing[] = {"--peer"};
    CHECK_RC(fm_opts_parse_args(&o, 1, missing, err, sizeof err), FM_EINVAL);
    char *badval[] = {"--log-level", "loud"};
    CHECK_RC(fm_opts_parse_args(&o, 2, badval, err, sizeof err), FM_EINVAL);
    char *badble[] = {"--ble-adapter", "eth0"};
    CHECK_RC(fm_opts_parse_args(&o, 2, badble, err, sizeof err), FM_EINVAL);
    /* the peer bound */
    fm_opts_defaults(&o);
    int rc = 0;
    for (int i = 0; i <= FM_CONFIG_MAX_PEERS && !rc; i++) {
        char a[32];
        snprintf(a, sizeof a, "10.0.0.%d:7400", i + 1);
        char *pv[] = {"--peer", a};
        rc = fm_opts_parse_args(&o, 2, pv, err, sizeof err);
        if (i < FM_CONFIG_MAX_PEERS)
            CHECK_OK(rc);
    }
    CHECK_RC(rc, FM_ELIMIT);
    CHECK_EQ_INT(o.npeers, FM_CONFIG_MAX_PEERS);
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/fm-config-XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK_EQ_INT(write(fd, text, strlen(text)), (long long)strlen(text));
    close(fd);
    return path;
}

static int load(const char *text, fm_daemon_opts *o, char *err, size_t n)
{
    char *path = write_tmp(text);
    fm_opts_defaults(o);
    int rc = fm_opts_load_file(o, path, err, n);
    unlink(path);
    free(path);
    return rc;
}

static void test_file(void)
{
    fm_daemon_opts o;
    char err[512];
    CHECK_OK(load(
        "# a node\n[node]\nlisten = 0.0.0.0:7400\n  peer = [::1]:7401 \n"
        "mdns = no\n; comment\nmax_connections = 4\nanti_entropy_ms = 2500\npush_delay_ms = 0\n"
        "lazy_push = on\n"
        "[subscriptions]\ndoses = critical\nnotes = bulk\ndoses = normal\n",
        &o, err, sizeof err));
    CHECK_EQ_INT(o.nlisten, 1);
    CHECK_EQ_INT(o.npeers, 1);
    CHECK(!o.mdns);
    CHECK_EQ_INT(o.max_conns, 4);
    CHECK_EQ_INT(o.anti_entropy_ms, 2500);
    CHECK_EQ_INT(o.push_delay_ms, FM_NODE_PUSH_AT_ONCE);
    CHECK_EQ_INT(o.lazy_push, FM_LAZY_ON);
    CHECK_EQ_INT(o.nsubs, 2);
    CHECK_STR(o.subs[0].collection, "doses");
    CHECK_EQ_INT(o.subs[0].prio, FM_PRIO_NORMAL); /* the later line wins */
    CHECK_EQ_INT(o.subs[1].prio, FM_PRIO_BULK);
    CHECK_OK(load("[subscriptions]\n* = none\n", &o, err, sizeof err));
    CHECK(o.subscribe_none);
    /* errors name the line */
    CHECK_RC(load("[node]\nlisten = 1.2.3.4:7400\nbogus = 1\n", &o, err, sizeof err), FM_ENOTFOUND);
    CHECK(strstr(err, ":3: unknown key") != NULL);
    CHECK_RC(load("[node]\nmax_connections = 0\n", &o, err, sizeof err), FM_EINVAL);
    CHECK_RC(load("[node]\npush_delay_ms = 1001\n", &o, err, sizeof err), FM_EINVAL);
    CHECK_OK(load("[node]\npush_delay_ms = 20\n", &o, err, sizeof err));
    CHECK_EQ_INT(o.push_delay_ms, 20);
    CHECK_RC(load("[node]\nlazy_push = sometimes\n", &o, err, sizeof err), FM_EINVAL);
    CHECK(strstr(err, ":2: bad value") != NULL);
    CHECK_RC(load("listen = 1.2.3.4\n", &o, err, sizeof err), FM_EINVAL);
    CHECK(strstr(err, ":1:") != NULL);
    CHECK_RC(load("[nodes]\n", &o, err, sizeof err), FM_EINVAL);
    CHECK_RC(load("[subscriptions]\nbad\x01name = normal\n", &o, err, sizeof err), FM_EINVAL);
    CHECK_RC(load("[subscriptions]\nx = urgent\n", &o, err, sizeof err), FM_EINVAL);
    char longline[FM_CONFIG_MAX_LINE + 100];
    memset(longline, '#', sizeof longline - 2);
    longline[sizeof longline - 2] = '\n';
    longline[sizeof longline - 1] = '\0';
    CHECK_RC(load(longline, &o, err, sizeof err), FM_ELIMIT);
    CHECK_RC(fm_opts_load_file(&o, "/nonexistent/fieldmesh.conf", err, sizeof err), FM_EIO);
    CHECK(strstr(err, "/nonexistent/fieldmesh.conf") != NULL);
    /* --config inside the flags: later flags override the file */
    char *path = write_tmp("[node]\nmdns = yes\nlog_level = warn\n");
    char *argv[] = {"--config", path, "--no-mdns"};
    fm_opts_defaults(&o);
    CHECK_OK(fm_opts_parse_args(&o, 3, argv, err, sizeof err));
    CHECK(!o.mdns);
    CHECK_EQ_INT(o.log_level, FM_LOG_WARN);
    unlink(path);
    free(path);
}

static size_t put_req(uint8_t *b, const char *const *args, int n)
{
    size_t off = 4;
    b[0] = b[1] = b[2] = 0, b[3] = (uint8_t)n;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(args[i]);
        b[off] = b[off + 1] = b[off + 2] = 0, b[off + 3] = (uint8_t)len;
        memcpy(b + off + 4, args[i], len);
        off += 4 + len;
    }
    return off;
}

static void test_control_wire(void)
{
    static const char *const args[] = {"fieldmesh", "put", "notes", "n1", "x=1", ""};
    uint8_t buf[256];
    size_t len = put_req(buf, args, 6), used;
    fm_control_request req;
    CHECK_OK(fm_control_parse(buf, len, &req, &used));
    CHECK_EQ_INT(used, len);
    CHECK_EQ_INT(req.argc, 6);
    for (int i = 0; i < 6; i++)
        CHECK_STR(req.argv[i], args[i]);
    CHECK(req.argv[6] == NULL);
    fm_control_request_free(&req);
    /* every prefix is incomplete, never an error or a crash */
    for (size_t k = 0; k < len; k++) {
        CHECK_RC(fm_control_parse(buf, k, &req, &used), FM_ETRUNC);
        CHECK(req.argv == NULL);
    }
    /* NUL inside an argument, zero arguments, too many */
    uint8_t nul[] = {0, 0, 0, 1, 0, 0, 0, 2, 'a', 0};
    CHECK_RC(fm_control_parse(nul, sizeof nul, &req, &used), FM_EDECODE);
    uint8_t none[] = {0, 0, 0, 0};
    CHECK_RC(fm_control_parse(none, sizeof none, &req, &used), FM_ELIMIT);
    uint8_t many[] = {0, 0, 0x10, 0};
    CHECK_RC(fm_control_parse(many, sizeof many, &req, &used), FM_ELIMIT);
    uint8_t huge[] = {0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff};
    CHECK_RC(fm_control_parse(huge, sizeof huge, &req, &used), FM_ELIMIT);
    /* response */
    uint8_t *resp;
    size_t rlen;
    CHECK_OK(fm_control_response(2, "out", 3, "e", 1, &resp, &rlen));
    CHECK_EQ_INT(rlen, 12 + 3 + 1);
    static const uint8_t want[] = {0, 0, 0, 2, 0, 0, 0, 3, 'o', 'u', 't', 0, 0, 0, 1, 'e'};
    CHECK_MEM(resp, want, sizeof want);
    free(resp);
    CHECK_RC(fm_control_response(0, NULL, FM_CONTROL_MAX_RESPONSE, NULL, 0, &resp, &rlen),
             FM_ELIMIT);
    /* no node running in a directory: the client says so and runs nothing */
    int code = 7;
    char *argv[] = {"fieldmesh", "status"};
    CHECK_RC(fm_control_call("/nonexistent-dir", 2, argv, stdout, stderr, &code), FM_ENOTFOUND);
    CHECK_EQ_INT(code, 7);
}

int main(void)
{
    RUN(test_addr_split);
    RUN(test_flags);
    RUN(test_file);
    RUN(test_control_wire);
    TEST_MAIN_END();
}
