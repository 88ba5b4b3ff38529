/*
 * config.c — options of `fieldmesh run`: defaults, INI file, command line (config.h).
 */
#include "transport/config.h"

#include "crdt/batch.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fm_opts_defaults(fm_daemon_opts *o)
{
    memset(o, 0, sizeof *o);
    o->mdns = true;
    o->ble = true;
    o->log_level = FM_LOG_INFO;
}

int fm_addr_split(const char *addr, char *host, size_t hostlen, uint16_t *port)
{
    const char *colon = NULL, *h = addr;
    size_t hl;
    if (!addr || !addr[0] || strlen(addr) > FM_NODE_MAX_ADDR)
        return FM_EINVAL;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || (end[1] && end[1] != ':'))
            return FM_EINVAL;
        h = addr + 1;
        hl = (size_t)(end - h);
        colon = end[1] ? end + 1 : NULL;
    } else {
        colon = strrchr(addr, ':');
        if (colon && strchr(addr, ':') != colon)
            return FM_EINVAL; /* a bare IPv6 address needs brackets */
        hl = colon ? (size_t)(colon - addr) : strlen(addr);
    }
    if (hl == 0 || hl >= hostlen)
        return FM_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = FM_DEFAULT_PORT;
    if (colon) {
        char *end;
        errno = 0;
        long p = strtol(colon + 1, &end, 10);
        if (errno || *end || end == colon + 1 || p < 1 || p > 65535)
            return FM_EINVAL;
        *port = (uint16_t)p;
    }
    return 0;
}

static int add_addr(char (*list)[FM_NODE_MAX_ADDR + 1], int *n, int max, const char *v)
{
    char host[FM_NODE_MAX_ADDR + 1];
    uint16_t port;
    if (fm_addr_split(v, host, sizeof host, &port))
        return FM_EINVAL;
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i], v) == 0)
            return 0;
    if (*n >= max)
        return FM_ELIMIT;
    snprintf(list[(*n)++], FM_NODE_MAX_ADDR + 1, "%s", v);
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1"))
        return *out = true, 0;
    if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0"))
        return *out = false, 0;
    return FM_EINVAL;
}

static int parse_u32(const char *v, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (errno || *end || end == v || v[0] == '-' || x < lo || x > hi)
        return FM_EINVAL;
    *out = (uint32_t)x;
    return 0;
}

static int parse_level(const char *v, int *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(v, names[i]) == 0)
            return *out = i, 0;
    return FM_EINVAL;
}

static int add_sub(fm_daemon_opts *o, const char *name, const char *prio)
{
    static const char *const names[] = {"critical", "normal", "bulk"};
    if (strcmp(name, "*") == 0) {
        if (strcmp(prio, "none") != 0)
            return FM_EINVAL;
        o->subscribe_none = true;
        return 0;
    }
    int p = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(prio, names[i]) == 0)
            p = i;
    size_t len = strlen(name);
    if (p < 0 || fm_name_check((const uint8_t *)name, len, FM_MAX_COLLECTION_LEN))
        return FM_EINVAL;
    for (size_t i = 0; i < o->nsubs; i++)
        if (strcmp(o->sub_names[i], name) == 0)
            return o->subs[i].prio = (uint8_t)p, 0;
    if (o->nsubs >= FM_NODE_MAX_SUBS)
        return FM_ELIMIT;
    memcpy(o->sub_names[o->nsubs], name, len + 1);
    o->subs[o->nsubs].collection = o->sub_names[o->nsubs];
    o->subs[o->nsubs].prio = (uint8_t)p;
    o->nsubs++;
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int node_key(fm_daemon_opts *o, const char *k, const char *v)
{
    if (!strcmp(k, "listen"))
        return add_addr(o->listen, &o->nlisten, FM_CONFIG_MAX_LISTEN, v);
    if (!strcmp(k, "peer"))
        return add_addr(o->peers, &o->npeers, FM_CONFIG_MAX_PEERS, v);
    if (!strcmp(k, "mdns"))
        return parse_bool(v, &o->mdns);
    if (!strcmp(k, "ble"))
        return parse_bool(v, &o->ble);
    if (!strcmp(k, "ble_adapter")) {
        if (strncmp(v, "hci", 3) != 0 || strlen(v) > 8 || !isdigit((unsigned char)v[3]))
            return FM_EINVAL;
        snprintf(o->ble_adapter, sizeof o->ble_adapter, "%s", v);
        return 0;
    }
    if (!strcmp(k, "log_level"))
        return parse_level(v, &o->log_level);
    if (!strcmp(k, "max_connections"))
        return parse_u32(v, 1, FM_NODE_MAX_CONNS / 2, &o->max_conns);
    if (!strcmp(k, "anti_entropy_ms"))
        return parse_u32(v, 100, 3600 * 1000, &o->anti_entropy_ms);
    if (!strcmp(k, "push_delay_ms")) {
        int rc = parse_u32(v, 0, FM_NODE_MAX_PUSH_DELAY_MS, &o->push_delay_ms);
        if (!rc && o->push_delay_ms == 0)
            o->push_delay_ms = FM_NODE_PUSH_AT_ONCE; /* the file's 0 is "at once" */
        return rc;
    }
    if (!strcmp(k, "lazy_push")) {
        static const char *const names[] = {"auto", "on", "off"}; /* FM_LAZY_* order */
        for (int i = 0; i < 3; i++)
            if (!strcmp(v, names[i]))
                return o->lazy_push = i, 0;
        return FM_EINVAL;
    }
    return FM_ENOTFOUND;
}

int fm_opts_load_file(fm_daemon_opts *o, const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return FM_EIO;
    }
    char line[FM_CONFIG_MAX_LINE + 2];
    enum { NONE, NODE, SUBS } section = NONE;
    int lineno = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, fp)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(fp)) {
            snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno,
                     FM_CONFIG_MAX_LINE);
            rc = FM_ELIMIT;
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            if (!strcmp(s, "[node]"))
                section = NODE;
            else if (!strcmp(s, "[subscriptions]"))
                section = SUBS;
            else {
                snprintf(err, errlen, "%s:%d: unknown section %s", path, lineno, s);
                rc = FM_EINVAL;
            }
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq || section == NONE) {
            snprintf(err, errlen, "%s:%d: expected KEY = VALUE inside [node] or [subscriptions]",
                     path, lineno);
            rc = FM_EINVAL;
            break;
        }
        *eq = '\0';
        char *k = trim(s), *v = trim(eq + 1);
        rc = section == NODE ? node_key(o, k, v) : add_sub(o, k, v);
        if (rc)
            snprintf(err, errlen, "%s:%d: %s '%s = %s'", path, lineno,
                     rc == FM_ENOTFOUND ? "unknown key" : "bad value", k, v);
    }
    if (!rc && ferror(fp)) {
        snprintf(err, errlen, "%s: read error", path);
        rc = FM_EIO;
    }
    fclose(fp);
    return rc;
}

int fm_opts_parse_args(fm_daemon_opts *o, int argc, char **argv, char *err, size_t errlen)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        bool takes = true;
        if (!strcmp(a, "--listen"))
            rc = v ? add_addr(o->listen, &o->nlisten, FM_CONFIG_MAX_LISTEN, v) : FM_EINVAL;
        else if (!strcmp(a, "--peer"))
            rc = v ? add_addr(o->peers, &o->npeers, FM_CONFIG_MAX_PEERS, v) : FM_EINVAL;
        else if (!strcmp(a, "--config"))
            rc = v ? fm_opts_load_file(o, v, err, errlen) : FM_EINVAL;
        else if (!strcmp(a, "--log-level"))
            rc = v ? parse_level(v, &o->log_level) : FM_EINVAL;
        else if (!strcmp(a, "--ble-adapter"))
            rc = v ? node_key(o, "ble_adapter", v) : FM_EINVAL;
        else if ((takes = false), !strcmp(a, "--no-mdns"))
            o->mdns = false;
        else if (!strcmp(a, "--no-ble"))
            o->ble = false;
        else
            rc = FM_ENOTFOUND;
        if (rc) {
            if (rc == FM_ENOTFOUND)
                snprintf(err, errlen, "run: unknown option %s", a);
            else if (strcmp(a, "--config") != 0 || !v)
                snprintf(err, errlen, "run: bad value for %s: %s", a, v ? v : "(missing)");
            return rc == FM_ENOTFOUND ? FM_EINVAL : rc;
        }
        i += takes;
    }
    return 0;
}
