/*
 * config.h — the options of a running node (`fieldmesh run`): built-in defaults, then the
 * config file (--config FILE), then the command line, each overriding the one before.
 *
 * The file is INI-style (docs in README.md, example in dist/fieldmesh.conf):
 *   # comment            ; comment
 *   [node]               listen = ADDR:PORT (repeatable), peer = HOST:PORT (repeatable),
 *                        mdns = yes|no, ble = yes|no, ble_adapter = hciN,
 *                        log_level = error|warn|info|debug, max_connections = N,
 *                        anti_entropy_ms = N, lazy_push = auto|on|off, push_delay_ms = N
 *   [subscriptions]      COLLECTION = critical|normal|bulk   (no section: every collection;
 *                        the single line `* = none`: nothing but this node's own writes)
 */
#ifndef FM_CONFIG_H
#define FM_CONFIG_H

#include "node/node.h"

#include <stdbool.h>
#include <stddef.h>

enum {
    FM_CONFIG_MAX_LISTEN = 8,
    FM_CONFIG_MAX_PEERS = 64,
    FM_CONFIG_MAX_LINE = 1024,
    FM_DEFAULT_PORT = 7400,
};

typedef struct fm_daemon_opts {
    char listen[FM_CONFIG_MAX_LISTEN][FM_NODE_MAX_ADDR + 1];
    int nlisten;
    char peers[FM_CONFIG_MAX_PEERS][FM_NODE_MAX_ADDR + 1];
    int npeers;
    bool mdns, ble;
    char ble_adapter[16];
    int log_level; /* FM_LOG_* */
    uint32_t max_conns, anti_entropy_ms;
    int lazy_push;          /* FM_LAZY_* */
    uint32_t push_delay_ms; /* fm_node_config.push_delay_ms (0: the default) */
    char sub_names[FM_NODE_MAX_SUBS][FM_MAX_COLLECTION_LEN + 1];
    fm_node_sub subs[FM_NODE_MAX_SUBS];
    size_t nsubs;
    bool subscribe_none;
} fm_daemon_opts;

void fm_opts_defaults(fm_daemon_opts *o);
/* Reads a config file into o. On error, a message naming the file and line goes to err. */
int fm_opts_load_file(fm_daemon_opts *o, const char *path, char *err, size_t errlen);
/* The `run` arguments; --config FILE is read where it appears, so later flags override it. */
int fm_opts_parse_args(fm_daemon_opts *o, int argc, char **argv, char *err, size_t errlen);
/* Splits "host:port", "[v6]:port" or "host" (default port) into host and port. */
int fm_addr_split(const char *addr, char *host, size_t hostlen, uint16_t *port);

#endif
